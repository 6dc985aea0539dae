//! The `websocket` carrier: one WebSocket per session
//! (`GET /api/v1/ws`, subprotocol `tproxy-v1.<session>`), each binary
//! message a batch of whole frames. Every stream the app opens enters the
//! proxy as a connection of its own (a loopback pair whose far end the
//! session serves, as WebSocket clients do), with the client's address.
//!
//! Flow control as the protocol sets it: each stream starts with 4 MiB of
//! credit each way; the relay grants WINDOW only after bytes reached the
//! proxy's socket, and stops reading a stream's socket at zero credit. A
//! client that sends past its credit loses that stream.

use super::registry::Credential;
use super::tokens::SessionEntry;
use crate::net::websocket::Pairs;
use futures_util::{SinkExt, StreamExt};
use mtgate_proto::webproxy::{self, Kind, INITIAL_WINDOW, MAX_RELAY_DATA};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

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
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.tasks.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Frames queued toward the app at once (then the stream readers wait).
const OUT_QUEUE: usize = 256;

/// What one carrier WebSocket needs besides its session.
pub struct Carrier {
    pub stats: Arc<super::Stats>,
    pub max_streams: usize,
    /// The client's address (policy, logs).
    pub client: SocketAddr,
    /// `websocket-lanes`: the one stream this WebSocket carries.
    pub lane: Option<u32>,
    pub pairs: Arc<Pairs>,
    pub sink: Arc<dyn StreamSink>,
}

/// Runs one carrier WebSocket until either side ends it: the session's
/// (every stream) or a lane's (its stream only; it must begin with OPEN).
pub async fn run<S>(ws: WebSocketStream<S>, entry: SessionEntry, c: Carrier)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let Carrier {
        stats,
        max_streams,
        client,
        lane,
        pairs,
        sink,
    } = c;
    let max_streams = if lane.is_some() { 1 } else { max_streams };
    let mut opened = false;
    let (mut tx, mut rx) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(OUT_QUEUE);
    let mut streams: HashMap<u32, Stream> = HashMap::new();
    // Closed ids are never reused; late frames for them are ignored.
    let mut closed: std::collections::VecDeque<u32> = std::collections::VecDeque::new();
    loop {
        tokio::select! {
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { break };
                let body = match msg {
                    Message::Binary(b) => b,
                    Message::Ping(_) | Message::Pong(_) => continue,
                    // Text or a close: the session ends.
                    _ => break,
                };
                let Ok(frames) = webproxy::decode_frames(&body) else { break };
                // A lane carries its own stream only, opened by its first frame.
                if let Some(id) = lane {
                    let first_ok = opened || frames.first().is_some_and(|f| f.kind == Kind::Open);
                    if !first_ok || frames.iter().any(|f| f.stream != id && f.stream != 0) {
                        break;
                    }
                    opened = true;
                }
                for f in frames {
                    match f.kind {
                        Kind::Open => {
                            if streams.contains_key(&f.stream) || closed.contains(&f.stream) || streams.len() >= max_streams {
                                stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                                close_frame(&out_tx, f.stream).await;
                                continue;
                            }
                            match open(f.stream, &pairs, &sink, client, &entry.credential, out_tx.clone(), stats.clone()).await {
                                Some(s) => {
                                    stats.streams_opened.fetch_add(1, Ordering::Relaxed);
                                    streams.insert(f.stream, s);
                                }
                                None => close_frame(&out_tx, f.stream).await,
                            }
                        }
                        Kind::Data => {
                            let Some(s) = streams.get(&f.stream) else { continue };
                            let n = f.payload.len() as i64;
                            stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                            if s.unacked.fetch_add(n, Ordering::AcqRel) + n > i64::from(INITIAL_WINDOW)
                                || s.to_socket.send(f.payload.to_vec()).is_err()
                            {
                                // Past its credit (or the socket is gone): the stream ends.
                                stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                                streams.remove(&f.stream);
                                remember(&mut closed, f.stream);
                                close_frame(&out_tx, f.stream).await;
                            }
                        }
                        Kind::Window => {
                            if let (Some(s), Some(d)) = (streams.get(&f.stream), f.window_delta()) {
                                s.credit.fetch_add(i64::from(d), Ordering::AcqRel);
                                s.credit_changed.notify_one();
                            }
                        }
                        Kind::Close => {
                            streams.remove(&f.stream);
                            remember(&mut closed, f.stream);
                        }
                        Kind::Ping => {
                            let mut b = Vec::new();
                            webproxy::encode(Kind::Pong, 0, f.payload, &mut b);
                            let _ = out_tx.send(b).await;
                        }
                        // HELLO belongs to session creation; the rest is ours to send.
                        _ => {}
                    }
                }
            }
            out = out_rx.recv() => {
                let Some(mut batch) = out else { break };
                // More that is ready goes in the same message.
                while batch.len() < 256 * 1024 {
                    match out_rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if tx.send(Message::Binary(batch.into())).await.is_err() {
                    break;
                }
            }
        }
        // Streams whose socket ended told us with a CLOSE already; forget them.
        streams.retain(|_, s| !s.tasks[0].is_finished());
        // A lane whose stream is over has carried what it could.
        if lane.is_some() && opened && streams.is_empty() && out_rx.is_empty() {
            break;
        }
    }
    let _ = tx.close().await;
}

fn remember(closed: &mut std::collections::VecDeque<u32>, id: u32) {
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
    pairs: &Pairs,
    sink: &Arc<dyn StreamSink>,
    client: SocketAddr,
    credential: &Credential,
    out: mpsc::Sender<Vec<u8>>,
    stats: Arc<super::Stats>,
) -> Option<Stream> {
    let (ours, theirs) = pairs.pair().await.ok()?;
    sink.serve(theirs, client, credential);
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
    Some(Stream {
        credit,
        credit_changed: changed,
        to_socket,
        unacked,
        tasks: [reader, writer],
    })
}
