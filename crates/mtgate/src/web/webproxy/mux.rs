//! The streams of one WEB proxy session, whatever carries them: the app's
//! frames go in ([`Mux::input`]), the frames toward the app come out of
//! the [`Outbox`] in batches. Every stream the app opens enters the proxy
//! as a connection of its own (a loopback pair whose far end the session
//! serves), pinned to the session's user and mode, with the client's
//! address.
//!
//! Flow control as the protocol sets it: each stream starts with 4 MiB of
//! credit each way; WINDOW is granted only after bytes reached the proxy's
//! socket, and a stream's socket is not read at zero credit. A client that
//! sends past its credit loses that stream.

use super::registry::Credential;
use crate::net::websocket::Pairs;
use mtgate_proto::webproxy::{self, Kind, INITIAL_WINDOW, MAX_RELAY_DATA};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};

/// Where streams go: a connection of the proxy's own.
pub trait StreamSink: Send + Sync {
    /// Serves `stream` (the far end of a loopback pair) as a client
    /// connection from `client`, authenticated only as `credential` says.
    fn serve(&self, stream: tokio::net::TcpStream, client: SocketAddr, credential: &Credential);
}

/// One stream's state on the carrier side.
struct Stream {
    /// Bytes the relay may still send to the app.
    credit: Arc<AtomicI64>,
    credit_changed: Arc<Notify>,
    /// The app's DATA toward the proxy socket.
    to_socket: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes the app sent and the relay has not granted back yet.
    unacked: Arc<AtomicI64>,
    tasks: [tokio::task::JoinHandle<()>; 2],
    stats: Arc<super::Stats>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
        self.stats.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Frames queued toward the app at once (then the stream readers wait).
const OUT_QUEUE: usize = 256;

/// What a session's streams need.
pub struct Setup {
    pub stats: Arc<super::Stats>,
    pub max_streams: usize,
    pub client: SocketAddr,
    pub credential: Credential,
    /// `websocket-lanes`: the one stream this carrier has.
    pub lane: Option<u32>,
    pub pairs: Arc<Pairs>,
    pub sink: Arc<dyn StreamSink>,
}

/// A session's streams.
pub struct Mux {
    s: Setup,
    streams: HashMap<u32, Stream>,
    /// Closed ids are never reused; late frames for them are ignored.
    closed: VecDeque<u32>,
    out: mpsc::Sender<Vec<u8>>,
    opened: bool,
    /// A stream's socket ended (its reader sent CLOSE).
    ended: Arc<Notify>,
}

/// The frames toward the app.
pub struct Outbox(mpsc::Receiver<Vec<u8>>);

impl Outbox {
    /// The next batch: one frame at least (waiting for it), then whatever
    /// else is ready, up to about `limit` bytes. `None`: the mux is gone.
    pub async fn batch(&mut self, limit: usize) -> Option<Vec<u8>> {
        let mut b = self.0.recv().await?;
        while b.len() < limit {
            match self.0.try_recv() {
                Ok(more) => b.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        Some(b)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Mux {
    pub fn new(s: Setup) -> (Self, Outbox) {
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        (
            Self {
                s,
                streams: HashMap::new(),
                closed: VecDeque::new(),
                out,
                opened: false,
                ended: Arc::new(Notify::new()),
            },
            Outbox(rx),
        )
    }

    /// Feeds one carrier body. `false`: the carrier must end (a malformed
    /// body, or a lane's rules broken).
    pub async fn input(&mut self, body: &[u8]) -> bool {
        let Ok(frames) = webproxy::decode_frames(body) else {
            return false;
        };
        if let Some(id) = self.s.lane {
            let first_ok = self.opened || frames.first().is_some_and(|f| f.kind == Kind::Open);
            if !first_ok || frames.iter().any(|f| f.stream != id && f.stream != 0) {
                return false;
            }
            self.opened = true;
        }
        let max = if self.s.lane.is_some() {
            1
        } else {
            self.s.max_streams
        };
        let stats = self.s.stats.clone();
        for f in frames {
            match f.kind {
                Kind::Open => {
                    let refused = if self.streams.contains_key(&f.stream)
                        || self.closed.contains(&f.stream)
                    {
                        Some(super::REFUSED_REUSED_ID)
                    } else if self.streams.len() >= max {
                        Some(super::REFUSED_MAX_STREAMS)
                    } else {
                        None
                    };
                    if let Some(why) = refused {
                        stats.streams_refused[why].fetch_add(1, Ordering::Relaxed);
                        close_frame(&self.out, f.stream).await;
                        continue;
                    }
                    match open(f.stream, &self.s, self.out.clone(), self.ended.clone()).await {
                        Some(st) => {
                            stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                            self.streams.insert(f.stream, st);
                        }
                        None => close_frame(&self.out, f.stream).await,
                    }
                }
                Kind::Data => {
                    let Some(st) = self.streams.get(&f.stream) else {
                        continue;
                    };
                    let n = f.payload.len() as i64;
                    stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                    if st.unacked.fetch_add(n, Ordering::AcqRel) + n > i64::from(INITIAL_WINDOW)
                        || st.to_socket.send(f.payload.to_vec()).is_err()
                    {
                        // Past its credit (or the socket is gone): the stream ends.
                        stats.streams_refused[super::REFUSED_CREDIT]
                            .fetch_add(1, Ordering::Relaxed);
                        self.streams.remove(&f.stream);
                        remember(&mut self.closed, f.stream);
                        close_frame(&self.out, f.stream).await;
                    }
                }
                Kind::Window => {
                    if let (Some(st), Some(d)) = (self.streams.get(&f.stream), f.window_delta()) {
                        st.credit.fetch_add(i64::from(d), Ordering::AcqRel);
                        st.credit_changed.notify_one();
                    }
                }
                Kind::Close => {
                    self.streams.remove(&f.stream);
                    remember(&mut self.closed, f.stream);
                }
                Kind::Ping => {
                    let mut b = Vec::new();
                    webproxy::encode(Kind::Pong, 0, f.payload, &mut b);
                    let _ = self.out.send(b).await;
                }
                // HELLO belongs to session creation; the rest is ours to send.
                _ => {}
            }
        }
        true
    }

    /// Forgets streams whose socket ended (they sent their CLOSE).
    pub fn reap(&mut self) {
        self.streams.retain(|_, st| !st.tasks[0].is_finished());
    }

    /// A lane whose stream is over (its last frames may still be queued).
    pub fn lane_done(&self) -> bool {
        self.s.lane.is_some() && self.opened && self.streams.is_empty()
    }

    /// Resolves when a stream's socket has ended since the last call.
    pub async fn stream_ended(&self) {
        self.ended.notified().await;
    }
}

fn remember(closed: &mut VecDeque<u32>, id: u32) {
    if closed.len() == 4096 {
        closed.pop_front();
    }
    closed.push_back(id);
}

async fn close_frame(out: &mpsc::Sender<Vec<u8>>, id: u32) {
    let mut b = Vec::with_capacity(8);
    webproxy::encode(Kind::Close, id, &[], &mut b);
    let _ = out.send(b).await;
}

/// A new stream: a loopback pair, the proxy serving its far end.
async fn open(
    id: u32,
    s: &Setup,
    out: mpsc::Sender<Vec<u8>>,
    ended: Arc<Notify>,
) -> Option<Stream> {
    let (ours, theirs) = s.pairs.pair().await.ok()?;
    s.sink.serve(theirs, s.client, &s.credential);
    let stats = s.stats.clone();
    let (mut rd, mut wr) = ours.into_split();
    let credit = Arc::new(AtomicI64::new(i64::from(INITIAL_WINDOW)));
    let changed = Arc::new(Notify::new());
    let unacked = Arc::new(AtomicI64::new(0));
    // The proxy's bytes → DATA frames, while the app has credit.
    let reader = {
        let (credit, changed, out) = (credit.clone(), changed.clone(), out.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_RELAY_DATA];
            loop {
                let have = credit.load(Ordering::Acquire);
                if have <= 0 {
                    changed.notified().await;
                    continue;
                }
                let want = (have as usize).min(MAX_RELAY_DATA);
                let n = match rd.read(&mut buf[..want]).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                credit.fetch_sub(n as i64, Ordering::AcqRel);
                stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                let mut f = Vec::with_capacity(8 + n);
                webproxy::encode(Kind::Data, id, &buf[..n], &mut f);
                if out.send(f).await.is_err() {
                    return;
                }
            }
            close_frame(&out, id).await;
            ended.notify_one();
        })
    };
    // The app's DATA → the proxy's socket, then WINDOW back.
    let (to_socket, mut from_app) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer = {
        let unacked = unacked.clone();
        tokio::spawn(async move {
            while let Some(chunk) = from_app.recv().await {
                if wr.write_all(&chunk).await.is_err() {
                    break;
                }
                let n = chunk.len() as u32;
                unacked.fetch_sub(i64::from(n), Ordering::AcqRel);
                let mut f = Vec::with_capacity(12);
                webproxy::encode(Kind::Window, id, &n.to_be_bytes(), &mut f);
                if out.send(f).await.is_err() {
                    break;
                }
            }
        })
    };
    s.stats.streams_open.fetch_add(1, Ordering::Relaxed);
    Some(Stream {
        credit,
        credit_changed: changed,
        to_socket,
        unacked,
        tasks: [reader, writer],
        stats: s.stats.clone(),
    })
}
