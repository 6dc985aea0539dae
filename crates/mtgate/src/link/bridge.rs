//! The bridge: this node's direct-mode DC connections go through links to
//! one exit (`[link.bridge]`).
//!
//! It keeps up to `connections` links and spreads sessions over them (the
//! live link with the fewest streams; a missing one is dialled in the
//! background, or at once when none is up). A link that ends (the exit
//! restarted, a record failed to open) is dropped and the next session
//! dials a fresh one. Each session's stream reaches the session as one end
//! of a loopback TCP pair, so the relay is the same as for any DC.

use super::config::BridgeConfig;
use super::mux::{Mux, OpenError, Opening, Setup};
use super::stats::LinkStats;
use super::LinkEvent;
use crate::net::connect::{ConnectError, ErrorClass};
use crate::net::websocket::Pairs;
use mtgate_proto::link::handshake::{self, Bridge as Hello};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for the exit's answer to a hello (one round trip when
/// all is well).
pub const HANDSHAKE_WAIT: Duration = Duration::from_secs(5);

/// The bridge side of `[link.bridge]`.
pub struct Bridge {
    cfg: BridgeConfig,
    links: Mutex<Vec<Mux>>,
    dialing: tokio::sync::Mutex<()>,
    pairs: tokio::sync::OnceCell<Pairs>,
    stats: Arc<LinkStats>,
    events: super::Events,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("exit", &self.cfg.exit)
            .finish_non_exhaustive()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // A reload replaced this bridge: its links end with their sessions.
        if let Ok(l) = self.links.lock() {
            l.iter().for_each(Mux::retire);
        }
    }
}

fn err(class: ErrorClass, detail: impl Into<String>) -> ConnectError {
    ConnectError {
        class,
        detail: detail.into(),
    }
}

impl Bridge {
    pub fn new(cfg: BridgeConfig, stats: Arc<LinkStats>, events: super::Events) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            links: Mutex::new(Vec::new()),
            dialing: tokio::sync::Mutex::new(()),
            pairs: tokio::sync::OnceCell::new(),
            stats,
            events,
        })
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.cfg
    }

    /// Links up now.
    pub fn live(&self) -> usize {
        self.links
            .lock()
            .map_or(0, |l| l.iter().filter(|m| m.closed().is_none()).count())
    }

    /// A stream to DC index `dc` through the exit, as the session's end of
    /// a loopback pair, and the exit's address; `wait` bounds the dial, the
    /// link handshake and the exit's answer.
    pub async fn open(
        self: &Arc<Self>,
        dc: i16,
        wait: Duration,
    ) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let (stream, exit) = self.stream(Opening::Dc(dc), wait).await?;
        let pairs = self
            .pairs
            .get_or_try_init(Pairs::new)
            .await
            .map_err(|e| err(ErrorClass::Local, format!("loopback pair: {e}")))?;
        let (ours, theirs) = pairs
            .pair()
            .await
            .map_err(|e| err(ErrorClass::Local, format!("loopback pair: {e}")))?;
        tokio::spawn(stream.pump(ours));
        Ok((theirs, exit))
    }

    /// Whether this bridge forwards clients' raw connections (`mode =
    /// "forward"`) instead of running their sessions.
    pub fn forwards(&self) -> bool {
        self.cfg.forward
    }

    /// Hands a client's raw connection to the exit, which runs its session,
    /// and relays until either side ends. A client the link cannot take is
    /// closed.
    pub async fn forward(self: &Arc<Self>, tcp: TcpStream, client: SocketAddr, wait: Duration) {
        let _ = tcp.set_nodelay(true);
        match self.stream(Opening::Client(client), wait).await {
            Ok((stream, _)) => stream.pump(tcp).await,
            Err(e) => tracing::warn!(%client, error = %e, "link: no stream for a forwarded client"),
        }
    }

    /// A stream for `what` on a live link, and the exit's address.
    async fn stream(
        self: &Arc<Self>,
        what: Opening,
        wait: Duration,
    ) -> Result<(super::mux::Stream, SocketAddr), ConnectError> {
        let mux = self.link(wait).await?;
        let exit = mux.peer();
        let stream = match mux.open(what, wait).await {
            Ok(s) => s,
            Err(OpenError::Refused(r)) => {
                self.stats
                    .streams_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(err(
                    ErrorClass::Refused,
                    format!("link exit {exit}: {}", OpenError::Refused(r)),
                ));
            }
            Err(e @ OpenError::Timeout(_)) => {
                return Err(err(ErrorClass::Timeout, format!("link exit {exit}: {e}")))
            }
            Err(e) => return Err(err(ErrorClass::Reset, format!("link exit {exit}: {e}"))),
        };
        self.stats
            .streams
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok((stream, exit))
    }

    /// The live link with the fewest streams; a new one when fewer than
    /// `connections` are up (at once when none is).
    async fn link(self: &Arc<Self>, wait: Duration) -> Result<Mux, ConnectError> {
        let (best, live) = self.pick();
        if live < self.cfg.connections {
            if let Some(m) = best.clone() {
                // Another link in the background; this session goes on now.
                let me = self.clone();
                tokio::spawn(async move {
                    if let Ok(_g) = me.dialing.try_lock() {
                        if me.pick().1 < me.cfg.connections {
                            let _ = me.dial(wait).await;
                        }
                    }
                });
                return Ok(m);
            }
            let _g = self.dialing.lock().await;
            if let (Some(m), _) = self.pick() {
                return Ok(m);
            }
            return self.dial(wait).await;
        }
        best.ok_or_else(|| err(ErrorClass::Local, "no link"))
    }

    fn pick(&self) -> (Option<Mux>, usize) {
        let Ok(mut l) = self.links.lock() else {
            return (None, 0);
        };
        l.retain(|m| m.closed().is_none());
        let best = l.iter().min_by_key(|m| m.streams()).cloned();
        (best, l.len())
    }

    /// Dials the exit and runs the handshake.
    async fn dial(self: &Arc<Self>, wait: Duration) -> Result<Mux, ConnectError> {
        let exit = self.cfg.exit.as_str();
        let wait = wait.min(HANDSHAKE_WAIT);
        let r = match tokio::time::timeout(wait, self.handshake()).await {
            Ok(r) => r,
            // Connected, but no answer: an exit that fronted the hello to a
            // site that waits for more says nothing either.
            Err(_) => Err(err(
                ErrorClass::Timeout,
                format!("link exit {exit}: no link answer within {wait:?}: a wrong exit key or token, or not an mtgate exit"),
            )),
        };
        let (tcp, peer, est) = match r {
            Ok(x) => x,
            Err(e) => {
                if matches!(e.class, ErrorClass::Protocol | ErrorClass::Timeout) {
                    self.stats
                        .refused
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    super::emit(
                        &self.events,
                        LinkEvent::Refused {
                            role: "bridge",
                            peer: exit.to_owned(),
                            reason: e.detail.clone(),
                        },
                    );
                }
                return Err(e);
            }
        };
        let cipher = est.cipher;
        self.stats.link_up(cipher);
        super::emit(
            &self.events,
            LinkEvent::Up {
                role: "bridge",
                peer: peer.to_string(),
                cipher,
                bridge: None,
            },
        );
        let mux = Mux::start(
            tcp,
            est.sealer,
            est.opener,
            Setup {
                peer,
                rekey: self.cfg.rekey,
                max_streams: usize::MAX,
                on_open: None,
                stats: self.stats.clone(),
                events: self.events.clone(),
                role: "bridge",
            },
        );
        let (m, stats, events) = (mux.clone(), self.stats.clone(), self.events.clone());
        tokio::spawn(async move {
            let why = m.wait_closed().await;
            stats.link_down();
            super::emit(
                &events,
                LinkEvent::Down {
                    role: "bridge",
                    peer: peer.to_string(),
                    reason: why,
                },
            );
        });
        if let Ok(mut l) = self.links.lock() {
            l.push(mux.clone());
        }
        Ok(mux)
    }

    async fn handshake(
        &self,
    ) -> Result<
        (
            super::carriage::Boxed,
            std::net::SocketAddr,
            handshake::Established,
        ),
        ConnectError,
    > {
        let exit = self.cfg.exit.as_str();
        let (mut tcp, peer) = self.cfg.carriage.connect(exit).await?;
        let now = crate::civil::unix_now().max(0) as u64;
        let (hello, first) = Hello::start(
            &self.cfg.exit_key,
            &self.cfg.token,
            self.cfg.offer.clone(),
            now,
        )
        .map_err(|e| err(ErrorClass::Local, e.to_string()))?;
        let io = |e: std::io::Error| ConnectError {
            class: ErrorClass::of_io(&e),
            detail: format!("link exit {exit}: {e}"),
        };
        tcp.write_all(&first).await.map_err(io)?;
        let mut answer = vec![0u8; 2];
        tcp.read_exact(&mut answer).await.map_err(|e| {
            // An exit that cannot read our hello fronts it: a website's
            // bytes, or a close, come back instead of an answer.
            err(
                ErrorClass::Protocol,
                format!("link exit {exit}: no link answer ({e}): a wrong exit key or token?"),
            )
        })?;
        let n = match handshake::message_len(&answer) {
            Ok(Some(n)) => n,
            _ => {
                return Err(err(
                    ErrorClass::Protocol,
                    format!("link exit {exit}: not a link answer: a wrong exit key or token, or not an mtgate exit"),
                ))
            }
        };
        answer.resize(n, 0);
        tcp.read_exact(&mut answer[2..]).await.map_err(io)?;
        let est = hello
            .finish(&answer)
            .map_err(|e| err(ErrorClass::Protocol, format!("link exit {exit}: {e}")))?;
        Ok((tcp, peer, est))
    }
}
