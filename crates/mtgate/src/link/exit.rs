//! The exit: bridges connect to `[link.exit] listen`, prove their token
//! and open streams; each stream becomes a DC connection from here.
//!
//! The first bytes must be a link handshake this exit can decrypt with one
//! of its bridges' tokens. Anything else (a prober, a browser, a bridge with
//! a wrong token or pinning another key) is handed to the mask host with
//! the bytes read so far, exactly as a failed client handshake is, so the
//! port looks like the website. A bridge whose token is right but that
//! shares no cipher, or whose clock is far off, gets an answer saying so
//! and is refused with an audit entry.
//!
//! A stream names the client's DC index; the exit dials the DC through its
//! own `[dcs]` group (its balancer, chains and WebSocket endpoints) and
//! relays raw bytes: the bridge's session speaks obfuscated2 to the DC
//! through it, so the exit never sees a client's keys.

use super::carriage::{Boxed, Opened};
use super::mux::{Mux, OnOpen, Opening, Setup, Stream};
use super::LinkEvent;
use crate::mask::{self, MaskLink};
use crate::runtime::{Live, Runtime};
use mtgate_proto::link::frame::Reason;
use mtgate_proto::link::handshake::{self, HandshakeError, MAX_MESSAGE};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// How long a bridge has to send its first message.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections on the link port at once (handshaking or established).
pub const MAX_CONNECTIONS: usize = 1024;

/// Where the exit serves the client connections a forwarding bridge hands
/// it (`[link.bridge] mode = "forward"`): as sessions of its own, under the
/// process's connection cap (the server implements it).
pub trait Sessions: Send + Sync + 'static {
    /// Serves `stream`, the raw connection of `client`.
    fn serve(&self, stream: TcpStream, client: SocketAddr);
}

/// Accepts on the link port until `stop` turns true.
pub async fn accept_loop(
    listener: TcpListener,
    live: Arc<Live>,
    mut stop: watch::Receiver<bool>,
    sessions: Arc<dyn Sessions>,
) {
    let Ok(pairs) = crate::net::websocket::Pairs::new().await.map(Arc::new) else {
        tracing::error!("link port: no loopback pair listener");
        return;
    };
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "link accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let on = Arc::new(ExitOpener {
            live: live.clone(),
            bridge: peer.ip(),
            sessions: sessions.clone(),
            pairs: pairs.clone(),
        });
        tokio::spawn(async move {
            serve(tcp, peer, on).await;
            drop(permit);
        });
    }
}

/// Reads a first message: the bytes read, and whether they hold one whole
/// message of a plausible length (`false`: not a link's).
async fn first_message<S: AsyncRead + Unpin>(s: &mut S) -> (Vec<u8>, bool) {
    let mut buf = Vec::with_capacity(2 + MAX_MESSAGE);
    let mut chunk = [0u8; 2 + MAX_MESSAGE];
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    loop {
        // What has come is read whole (a stranger's request goes to the
        // mask host as it came); a bridge sends its hello and waits.
        match handshake::message_len(&buf) {
            Err(_) => return (buf, false),
            Ok(Some(n)) if buf.len() >= n => {
                let whole = buf.len() == n;
                return (buf, whole);
            }
            Ok(_) => {}
        }
        let r = tokio::time::timeout_at(deadline, s.read(&mut chunk)).await;
        match r {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => return (buf, false),
        }
    }
}

/// Reads and answers the hello on `s`; the established link's halves, or
/// the bytes read when they are not a link's (`Err`).
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    peer: SocketAddr,
    cfg: &super::ExitConfig,
    rt: &Runtime,
) -> Result<Option<(handshake::Established, String)>, Vec<u8>> {
    let stats = &rt.link_stats.exit;
    let (first, whole) = first_message(s).await;
    let tokens: Vec<_> = cfg.tokens.iter().map(|(_, t)| t.clone()).collect();
    let now = crate::civil::unix_now().max(0) as u64;
    let accepted = match whole {
        true => handshake::accept(&cfg.key, &tokens, &cfg.offer, &first, now),
        false => Err(HandshakeError::NotOurs),
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            if !first.is_empty() {
                stats
                    .refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A stranger's bytes are not worth an audit line each: counted
                // and logged at debug; a wrong token looks the same as a probe.
                tracing::debug!(%peer, error = %e, "link port: not a link handshake");
            }
            return Err(first);
        }
    };
    if s.write_all(&accepted.answer).await.is_err() {
        return Ok(None);
    }
    match accepted.result {
        Ok(est) => {
            let bridge = cfg
                .tokens
                .get(est.token)
                .map(|(n, _)| n.clone())
                .unwrap_or_default();
            Ok(Some((est, bridge)))
        }
        Err(e) => {
            stats
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            super::emit(
                &rt.telemetry,
                LinkEvent::Refused {
                    role: "exit",
                    peer: peer.to_string(),
                    reason: e.to_string(),
                },
            );
            Ok(None)
        }
    }
}

async fn serve(tcp: TcpStream, peer: SocketAddr, opener: Arc<ExitOpener>) {
    let live = opener.live.clone();
    let rt = live.current();
    let Some(cfg) = rt.config.link.exit.clone() else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let (carriage, est, bridge) = match cfg.carriage.open(tcp).await {
        Opened::Done => return,
        Opened::Tcp(mut tcp) => match hello(&mut tcp, peer, &cfg, &rt).await {
            Ok(Some((est, bridge))) => (Box::new(tcp) as Boxed, est, bridge),
            Ok(None) => return,
            Err(read) => return front(tcp, peer, &read, &rt).await,
        },
        Opened::Inside(mut s) => match hello(&mut s, peer, &cfg, &rt).await {
            Ok(Some((est, bridge))) => (s, est, bridge),
            Ok(None) => return,
            Err(_) => return cfg.carriage.refuse_inside(s).await,
        },
    };
    let stats = rt.link_stats.exit.clone();
    stats.link_up(est.cipher);
    super::emit(
        &rt.telemetry,
        LinkEvent::Up {
            role: "exit",
            peer: peer.to_string(),
            cipher: est.cipher,
            bridge: Some(bridge),
        },
    );
    let mux = Mux::start(
        carriage,
        est.sealer,
        est.opener,
        Setup {
            peer,
            rekey: cfg.rekey,
            max_streams: cfg.max_streams,
            on_open: Some(opener),
            stats: stats.clone(),
            events: rt.telemetry.clone(),
            role: "exit",
        },
    );
    drop(rt);
    let why = mux.wait_closed().await;
    stats.link_down();
    super::emit(
        &live.current().telemetry,
        LinkEvent::Down {
            role: "exit",
            peer: peer.to_string(),
            reason: why,
        },
    );
}

/// Hands a connection that is not a link to the mask host, replaying what
/// it sent.
async fn front(tcp: TcpStream, peer: SocketAddr, read: &[u8], rt: &Runtime) {
    if !rt.config.fronting {
        return;
    }
    let link = MaskLink::new(
        rt.mask_host(),
        rt.config.connect_timeout,
        None,
        rt.mask_gate(peer.ip(), false),
    );
    Box::pin(mask::splice(tcp, read, false, link)).await;
}

/// Opens a DC connection for each stream a bridge opens, or serves the
/// client connection a forwarding bridge hands over.
struct ExitOpener {
    live: Arc<Live>,
    bridge: std::net::IpAddr,
    sessions: Arc<dyn Sessions>,
    pairs: Arc<crate::net::websocket::Pairs>,
}

impl OnOpen for ExitOpener {
    fn open(&self, stream: Stream, what: Opening) {
        let dc = match what {
            Opening::Dc(dc) => dc,
            Opening::Client(client) => return self.client(stream, client),
        };
        let rt = self.live.current();
        rt.link_stats
            .exit
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let bridge = self.bridge;
        tokio::spawn(async move {
            let route = rt.route();
            // Boxed: the dial is large and brief, the task lives as long as the session.
            let r = Box::pin(crate::upstream::connect_raw(&route, dc, bridge)).await;
            match r {
                Ok(tcp) => {
                    if stream.opened().await {
                        stream.pump(tcp).await;
                    }
                }
                Err(crate::upstream::UpstreamError::UnknownDc(_)) => {
                    stream.refuse(Reason::UnknownDc)
                }
                Err(e) => {
                    tracing::debug!(error = %e, dc, "link exit: DC unreachable");
                    stream.refuse(Reason::Unreachable)
                }
            }
        });
    }
}

impl ExitOpener {
    /// A forwarded client: one end of a loopback pair becomes a session of
    /// this node's, the other is pumped to the stream.
    fn client(&self, stream: Stream, client: SocketAddr) {
        let (pairs, sessions) = (self.pairs.clone(), self.sessions.clone());
        self.live
            .current()
            .link_stats
            .exit
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            let Ok((ours, theirs)) = pairs.pair().await else {
                return stream.refuse(Reason::Busy);
            };
            if stream.opened().await {
                sessions.serve(theirs, client);
                stream.pump(ours).await;
            }
        });
    }
}
