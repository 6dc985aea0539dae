//! One client connection from accept to close: drive the handshake machine
//! under a deadline, open the upstream, run the relay, and emit events. Exactly
//! one [`CloseReason`] ends every session.

use crate::config::policy::RefuseAction;
use crate::events::{CloseReason, Event};
use crate::mask::{self, MaskLink};
use crate::net::inbound::{Inbound, Meta, Transport};
use crate::net::proxy_protocol::{Announce, Version as ProxyVersion};
use crate::peer::Peer;
use crate::policy::engine::Refusal;
use crate::relay::{self, ClientSide, Traffic};
use crate::runtime::Runtime;
use crate::stop::Stop;
use crate::upstream::{self, UpstreamError};
use mtgate_proto::{Handshake, Outcome, RejectReason};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves one accepted client connection. At `debug` level it runs inside a
/// `conn` tracing span that carries the connection id and peer, and the user
/// and mode once known, so every log line of the connection can be
/// correlated. The span is `debug` on purpose: the subscriber keeps a slot
/// per live span, sized to the peak of open connections and never given
/// back (measured: ≈ 400 B per connection, RSS that stayed after a load of
/// 10 000), and client addresses stay out of the default logs. INFO lines
/// carry the connection id.
///
/// The task is shaped for idle connections: everything before the relay
/// (admission, handshake, fronting, ME, dialing) runs in [`setup`], a boxed
/// future that is freed when it ends, so the task keeps only the relay, the
/// user's lease and a few words (no async-fn arguments stored twice).
pub fn serve(
    inbound: Inbound,
    rt: Arc<Runtime>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> impl std::future::Future<Output = ()> + Send {
    use tracing::Instrument;
    let id = rt.next_conn_id();
    let Inbound { stream, meta } = inbound;
    let peer = meta.peer;
    let span = tracing::debug_span!(
        "conn",
        id,
        %peer,
        listener = %meta.listener,
        transport = meta.transport.label(),
        client = tracing::field::Empty,
        user = tracing::field::Empty,
        mode = tracing::field::Empty
    );
    async move {
        let started = Instant::now();
        rt.telemetry.emit(Event::Opened { id, peer });
        let _ = stream.set_nodelay(true);
        let traffic = Traffic::default();
        let mut user_name: Option<(usize, mtgate_proto::ClientMode)> = None;
        let shutdown = Stop::new(shutdown);
        // One awaited future that is first the boxed setup, then the relay:
        // the setup's result is moved into the relay, never kept beside it.
        let deadlines = relay::Deadlines {
            idle: rt.config.idle_timeout,
            first_answer: rt.config.connect_timeout,
        };
        let reason = Phases::Setup {
            setup: Box::pin(setup(
                stream,
                meta,
                id,
                &rt,
                &traffic,
                &mut user_name,
                shutdown,
            )),
            make: Some(|r: Ready| {
                relay::run(
                    r.client, r.upstream, deadlines, &traffic, r.shutdown, r.lease, r.source,
                )
            }),
        }
        .await;
        let user = user_name.map(|(u, _)| rt.users[u].name.as_str());
        rt.telemetry.emit(Event::Closed {
            id,
            user,
            mode: user_name.map(|(_, m)| m),
            reason,
            up: traffic.up.load(Relaxed),
            down: traffic.down.load(Relaxed),
            lasted: started.elapsed(),
        });
    }
    .instrument(span)
}

/// What the relay needs, once [`setup`] has authenticated the client and
/// dialed the DC; the guards release the source's and the user's slots when
/// the session ends.
struct Ready {
    client: ClientSide,
    upstream: relay::UpstreamSide,
    shutdown: Stop,
    lease: Option<crate::policy::engine::Metered>,
    source: crate::policy::engine::SourceGuard,
}

pin_project_lite::pin_project! {
    /// A session's two phases as one future: the boxed [`setup`] (freed when
    /// it ends), then the relay that `make` builds from its result, so the
    /// result is moved into the relay and never kept beside it.
    #[project = PhasesProj]
    enum Phases<S, F, R> {
        Setup { setup: Pin<Box<S>>, make: Option<F> },
        Relay { #[pin] relay: R },
    }
}

impl<S, F, R> Future for Phases<S, F, R>
where
    S: Future<Output = Result<Ready, CloseReason>>,
    F: FnOnce(Ready) -> R,
    R: Future<Output = CloseReason>,
{
    type Output = CloseReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        loop {
            match self.as_mut().project() {
                PhasesProj::Setup { setup, make } => {
                    let ready = match ready!(setup.as_mut().poll(cx)) {
                        Ok(ready) => ready,
                        Err(reason) => return Poll::Ready(reason),
                    };
                    let Some(make) = make.take() else {
                        return Poll::Ready(CloseReason::ClientError);
                    };
                    let relay = make(ready);
                    self.set(Phases::Relay { relay });
                }
                PhasesProj::Relay { relay } => return relay.poll(cx),
            }
        }
    }
}

/// How the handshake phase ended.
enum Phase {
    Accepted(Box<mtgate_proto::Accepted>),
    /// Not ours: front to the mask host (bytes held back are in the machine).
    Front {
        reason: CloseReason,
        client_eof: bool,
    },
    /// End now, silently.
    Close(CloseReason),
}

/// A client the policy refused before reading a byte: fronted to the mask
/// host (as any connection that is not ours; past the fronting budget, held
/// silent, see [`crate::front`]) or, where configured, closed.
async fn refuse(
    stream: TcpStream,
    id: u64,
    who: Peer,
    rt: &Runtime,
    refusal: Refusal,
) -> CloseReason {
    let ip = who.source_ip();
    if refusal.action == RefuseAction::Front && rt.config.fronting {
        rt.telemetry.emit(Event::Fronted {
            id,
            cause: CloseReason::Policy(refusal.reason),
        });
        let link = MaskLink::new(
            rt.mask_host(),
            rt.config.connect_timeout,
            None,
            // A refusal for volume (over the cap) shares a suspect's budget.
            rt.mask_gate(ip, refusal.reason.is_flood()),
        )
        .announcing(announce(rt, who, &stream));
        Box::pin(mask::splice(stream, &[], false, link)).await;
    }
    CloseReason::Policy(refusal.reason)
}

/// The PROXY protocol header a fronted connection sends the mask host first:
/// the one `[proxy_protocol] mask` asks for, and always one to the own site
/// (it learns the real client from it; see crate::web).
fn announce(rt: &Runtime, who: Peer, stream: &TcpStream) -> Option<Announce> {
    let own_site = rt.site.is_some().then_some(ProxyVersion::V2);
    let version = rt.config.proxy_protocol.mask.or(own_site)?;
    Some(Announce {
        version,
        client: who.client,
        local: stream.local_addr().ok()?,
    })
}

/// Everything before the relay: admission, the handshake (or fronting), the
/// user's limits, the ME route (which relays itself) or the DC dial. `Err` is
/// the session's close reason when it ends here.
#[allow(clippy::too_many_arguments)]
async fn setup(
    mut stream: TcpStream,
    meta: Meta,
    id: u64,
    rt: &Arc<Runtime>,
    traffic: &Traffic,
    user_out: &mut Option<(usize, mtgate_proto::ClientMode)>,
    shutdown: Stop,
) -> Result<Ready, CloseReason> {
    // The client as the policy counts it (behind a trusted front end, the
    // address it vouches for; see crate::peer).
    let who = match meta.vouched {
        // The transport learned the client from a trusted front end.
        Some(client) => Peer::via(meta.peer, std::net::SocketAddr::new(client, 0)),
        None if meta.transport != Transport::Tcp => Peer::direct(meta.peer),
        None => match rt.peer_source.identify(&mut stream, meta.peer).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!(error = %e, "no client address from a trusted front end");
                return Err(CloseReason::ClientError);
            }
        },
    };
    // Only a raw TCP stream can be handed to the mask site byte for byte.
    let fronting = rt.config.fronting && meta.transport.can_front();
    if let Some(front) = who.front {
        tracing::Span::current().record("client", tracing::field::display(who.client));
        tracing::debug!(%front, client = %who.client, "client address from a trusted front end");
    }
    let ip = who.source_ip();
    let mut hit = |reason, enforced| {
        rt.telemetry.emit(Event::PolicyHit {
            id,
            reason,
            enforced,
            source: ip,
        })
    };
    // Admission (ACL, geo, rate, concurrency, reputation) before reading a byte.
    let mut source = match rt.policy.admit(ip, &mut hit) {
        Ok(guard) => guard,
        Err(refusal) if fronting => return Err(refuse(stream, id, who, rt, refusal).await),
        Err(refusal) => return Err(CloseReason::Policy(refusal.reason)),
    };
    let mut hs = Handshake::new();
    let mut link = fronting.then(|| {
        MaskLink::new(
            rt.mask_host(),
            rt.config.connect_timeout,
            rt.config.mask_preconnect,
            rt.mask_gate(ip, source.suspect.is_some()),
        )
        .announcing(announce(rt, who, &stream))
    });
    // The handshake, fronting, ME and dial futures are boxed: an idle session's
    // task is as big as its largest state, and those only live briefly.
    // A transport that proved its user (a WEB proxy stream) admits only it.
    let pinned = meta.pin.map(|p| rt.pinned_handshake(p));
    let phase = Box::pin(handshake_phase(
        &mut stream,
        &mut hs,
        rt,
        link.as_mut(),
        pinned.as_ref(),
    ))
    .await;
    drop(pinned);
    if let Phase::Close(CloseReason::Rejected(r))
    | Phase::Front {
        reason: CloseReason::Rejected(r),
        ..
    } = &phase
    {
        let user = hs.matched_user().and_then(|u| rt.users.get(u));
        rt.policy.handshake_failed(
            ip,
            *r == RejectReason::Replay,
            user.map(|u| u.name.as_str()),
        );
    }
    let accepted = match phase {
        Phase::Accepted(a) => a,
        Phase::Close(r) => return Err(r),
        Phase::Front { reason, client_eof } => {
            let Some(mut link) = link else {
                return Err(reason);
            };
            if let Some(sni_mask) = hs.sni().and_then(|d| rt.config.mask_hosts.get(d)) {
                if sni_mask != link.addr() {
                    // An outside site gets a header only if configured.
                    let keep = rt.config.proxy_protocol.mask.is_some();
                    link = link.redirect(sni_mask.clone(), keep);
                }
            }
            rt.telemetry.emit(Event::Fronted { id, cause: reason });
            Box::pin(mask::splice(stream, hs.received(), client_eof, link)).await;
            return Err(reason);
        }
    };
    // A valid handshake: evidence for the source (see policy.rate.scope).
    source.authenticated();
    // The handshake's buffers (the client's first bytes, the SNI) and the
    // unused mask link must not stay with an idle connection.
    drop(link);
    drop(hs);
    *user_out = Some((accepted.user, accepted.mode));
    // The user's limits: enabled, expiry, connections, addresses, quota; the
    // lease meters the relay (quota, bandwidth) and is released at the end.
    let lease =
        match rt
            .policy
            .admit_user(&rt.users[accepted.user].name, ip, source.limited, &mut hit)
        {
            Ok(lease) => lease,
            Err(refusal) => return Err(CloseReason::Policy(refusal.reason)),
        };
    let shutdown = shutdown.with_user(&rt.drains, &rt.users[accepted.user].name);
    let span = tracing::Span::current();
    span.record("user", rt.users[accepted.user].name.as_str());
    span.record("mode", accepted.mode.name());
    rt.telemetry.emit(Event::Authenticated {
        id,
        user: &rt.users[accepted.user].name,
        mode: accepted.mode,
        dc: accepted.dc.0,
    });
    // Middle-proxy mode (with its fallback to direct), see crate::me.
    let (stream, accepted) = match Box::pin(crate::me::route(
        rt,
        crate::me::Conn {
            id,
            client: who.client,
        },
        stream,
        accepted,
        traffic,
        shutdown.clone(),
        lease.as_ref(),
    ))
    .await
    {
        crate::me::Routed::Done(reason) => return Err(reason),
        crate::me::Routed::Direct(stream, accepted) => (stream, accepted),
    };
    let mut events = |a: upstream::Attempt<'_>| match a {
        upstream::Attempt::Failed { dc, class, error } => {
            rt.telemetry.emit(Event::UpstreamFailed {
                id,
                dc,
                class,
                error,
            })
        }
        upstream::Attempt::Ejected { target, cooldown } => {
            rt.telemetry.emit(Event::TargetEjected { target, cooldown })
        }
        upstream::Attempt::Restored { target } => {
            rt.telemetry.emit(Event::TargetRestored { target })
        }
    };
    let route = rt.route();
    let connected = match Box::pin(upstream::connect_direct(
        &route,
        accepted.dc,
        accepted.tag,
        ip,
        &mut events,
    ))
    .await
    {
        Ok(c) => c,
        Err(UpstreamError::UnknownDc(_)) => return Err(CloseReason::UnknownDc),
        Err(UpstreamError::Unreachable { .. }) => return Err(CloseReason::UpstreamConnectFailed),
    };
    rt.telemetry.emit(Event::UpstreamConnected {
        id,
        dc: connected.dc,
        addr: connected.addr,
        took: connected.took,
    });
    // Moved out of its box in a block of its own, so the box is freed now
    // and not when this (long-lived) function returns.
    let a = {
        let boxed = accepted;
        *boxed
    };
    let client = ClientSide {
        stream,
        ciphers: a.ciphers,
        tls: a.tls,
        early: a.early,
    };
    Ok(Ready {
        client,
        upstream: connected.side,
        shutdown,
        lease,
        source,
    })
}

/// Reads and feeds the handshake machine until it decides, the deadline
/// passes, the client closes, or the (pre-connected) mask site acts first.
async fn handshake_phase(
    stream: &mut TcpStream,
    hs: &mut Handshake,
    rt: &Arc<Runtime>,
    mut link: Option<&mut MaskLink>,
    pinned: Option<&mtgate_proto::HandshakeConfig>,
) -> Phase {
    let deadline = tokio::time::Instant::now() + rt.config.handshake_timeout;
    // On the heap, and only during the handshake: a stack array would size every
    // connection's task for it, idle ones included.
    let mut buf = vec![0u8; 4096];
    // Once we answered (FakeTLS ServerHello) the connection can no longer be fronted.
    let mut responded = false;
    let front_or_close = |reason, client_eof, responded: bool| {
        if responded {
            Phase::Close(reason)
        } else {
            Phase::Front { reason, client_eof }
        }
    };
    loop {
        let read = async {
            match &mut link {
                Some(l) if !responded => tokio::select! {
                    r = stream.read(&mut buf) => Some(r),
                    _ = l.activity() => None,
                },
                _ => Some(stream.read(&mut buf).await),
            }
        };
        let n = match tokio::time::timeout_at(deadline, read).await {
            Err(_) => return front_or_close(CloseReason::HandshakeTimeout, false, responded),
            // The mask site spoke or closed first (its own timeout): mirror it.
            Ok(None) => return front_or_close(CloseReason::HandshakeTimeout, false, responded),
            Ok(Some(Ok(0))) => return front_or_close(CloseReason::HandshakeEof, true, responded),
            Ok(Some(Ok(n))) => n,
            Ok(Some(Err(_))) => return Phase::Close(CloseReason::ClientError),
        };
        let outcome = {
            let mut replay = rt.replay.lock().unwrap_or_else(|p| p.into_inner());
            let current = rt.handshake.load();
            hs.feed(
                &buf[..n],
                unix_now(),
                pinned.unwrap_or(&current),
                &mut replay,
                &mut mtgate_crypto::fill_random,
            )
        };
        match outcome {
            Outcome::NeedMore => {}
            // A handshake another node served is a replay here too (shared
            // state, when configured): fronted before anything is answered.
            Outcome::Respond(_) | Outcome::Accepted(_)
                if !responded && replayed_elsewhere(rt, hs).await =>
            {
                return front_or_close(CloseReason::Rejected(RejectReason::Replay), false, false)
            }
            Outcome::Respond(bytes) => {
                responded = true;
                if stream.write_all(&bytes).await.is_err() {
                    return Phase::Close(CloseReason::ClientError);
                }
            }
            Outcome::Accepted(a) => return Phase::Accepted(a),
            Outcome::Reject(RejectReason::UnknownSni) if !rt.config.unknown_sni_mask => {
                return Phase::Close(CloseReason::Rejected(RejectReason::UnknownSni))
            }
            Outcome::Reject(r) => {
                return front_or_close(CloseReason::Rejected(r), false, responded)
            }
        }
    }
}

/// Whether the shared state says another node used this handshake (always
/// `false` without `[shared]`: one `Option` check).
async fn replayed_elsewhere(rt: &Runtime, hs: &Handshake) -> bool {
    match (&rt.shared, hs.fingerprint()) {
        (Some(shared), Some(fp)) => shared.replayed(fp).await,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    /// An idle session's task is this future: keep the big, short-lived states
    /// (handshake, fronting, ME, dialing, the ciphers) out of it. Measured:
    /// 2 232 B with the `select!`-based relay, 888 B (release) and 912 B
    /// (debug) with the hand-written one and the boxed setup; 1 024 B (debug)
    /// after the networking seams, 1 016 B with the WEB proxy's pin in
    /// `Meta` (its vouched client kept as an address only).
    #[tokio::test]
    async fn session_future_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let a = l.local_addr().expect("addr");
        let s = tokio::net::TcpStream::connect(a).await.expect("connect");
        let cfg = crate::config::Config::from_overrides(&Default::default()).expect("config");
        let rt = std::sync::Arc::new(
            crate::runtime::Runtime::build(cfg, vec![], Default::default()).expect("runtime"),
        );
        let (_tx, rx) = tokio::sync::watch::channel(false);
        let inbound = crate::net::inbound::Inbound {
            stream: s,
            meta: crate::net::inbound::Meta {
                peer: a,
                listener: a,
                transport: crate::net::inbound::Transport::Tcp,
                vouched: None,
                pin: None,
            },
        };
        let f = super::serve(inbound, rt, rx);
        let size = std::mem::size_of_val(&f);
        eprintln!("session future: {size} B");
        assert!(size <= 1024, "session future is {size} bytes");
    }
}
