//! Listeners and the accept loop (DESIGN §1 "accept").
//!
//! Each configured address gets a listener; `[::]` is bound dual-stack
//! (IPV6_V6ONLY off) so IPv4 and IPv6 clients share one port. A semaphore caps
//! concurrent connections (at the cap, accepting pauses and new connections
//! wait in the kernel queue: never an accept-and-close a website would not do);
//! accept errors such as EMFILE back off instead of spinning.
//!
//! Lifecycle (zero-downtime restart, see `handover`): a server starts on
//! listeners it binds ([`Server::start`]) or is given ([`Server::start_with`],
//! [`Server::start_labeled`]: inherited from systemd or from the previous
//! process); [`Server::listener_fds`] duplicates the listening sockets for a
//! successor; [`Server::stop_accepting`] closes this process's listeners without
//! touching sessions; [`Server::drain`] waits for sessions up to a deadline and
//! then tells the rest to end. Each accept loop runs inside a small wrapper
//! ([`guarded_accept`]) that adds the stop signal and the liveness count the
//! systemd watchdog reads; the accept loop itself is unchanged.

use crate::net::inbound::TcpInbound;
use crate::runtime::{Live, Runtime};
use crate::session;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// A running server.
/// X25519 key shares kept ready for ServerHellos (32 bytes each).
const KEY_SHARE_POOL: usize = 256;

pub struct Server {
    pub local_addrs: Vec<SocketAddr>,
    /// The WebSocket listeners' local addresses (`[websocket]`).
    pub ws_addrs: Vec<SocketAddr>,
    /// The configured address each listener serves (same order as `local_addrs`).
    pub configured: Vec<SocketAddr>,
    /// The link port's local address (`[link.exit]`).
    pub link_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    conns: Arc<Semaphore>,
    max: usize,
    /// The listeners, shared with the accept loops; emptied by `stop_accepting`.
    listeners: Arc<Mutex<Vec<Arc<TcpListener>>>>,
    /// The `[websocket]` listeners with their configured addresses; the same.
    ws_listeners: WsListeners,
    /// Tells the accept loops to stop (sessions go on).
    stop: watch::Sender<bool>,
    /// Accept loops running now.
    alive: Arc<AtomicUsize>,
    /// The users' stop signals, which authenticated sessions listen to
    /// instead of `shutdown` (shared across reloads).
    drains: Arc<crate::stop::Drains>,
    /// Upstream upkeep: active checks of the DC targets the balancer took
    /// out, and the warm pool.
    upkeep: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Server {
    /// Sessions end with the server, as they did when `shutdown` was their
    /// only signal (its sender's drop ended them).
    fn drop(&mut self) {
        self.drains.shutdown_all();
        self.upkeep.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

/// Binds a listening socket (dual-stack for the IPv6 unspecified address).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(bind_std(addr)?)
}

/// [`bind`], as a std listener (non-blocking).
pub fn bind_std(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(!addr.ip().is_unspecified())?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

/// The `[websocket]` listeners (configured address, socket), shared with
/// their accept loops and the handover.
type WsListeners = Arc<Mutex<Vec<(SocketAddr, Arc<TcpListener>)>>>;

/// [`bind_std`] with `SO_REUSEPORT` (the WebSocket listeners).
fn bind_reuse_port(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(!addr.ip().is_unspecified())?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    Ok(sock.into())
}

impl Server {
    /// Binds every listener and starts accepting.
    pub async fn start(rt: Arc<Runtime>) -> anyhow::Result<Self> {
        Self::start_live(Live::new(rt)).await
    }

    /// Binds every configured listener and starts accepting; each new
    /// connection gets the runtime `live` holds at that moment (a reload swaps it).
    pub async fn start_live(live: Arc<Live>) -> anyhow::Result<Self> {
        let mut listeners = Vec::new();
        for addr in &live.current().config.listen {
            listeners.push((*addr, bind_configured(*addr)?));
        }
        let mut server = Self::start_labeled(live.clone(), listeners)?;
        server.start_websocket(&live, Vec::new())?;
        server.start_link(&live)?;
        Ok(server)
    }

    /// Starts accepting on the `[websocket]` listeners: those `handed`
    /// over by a previous process (by configured address), the rest bound
    /// here with `SO_REUSEPORT` (so a taker without them can still bind
    /// beside the old process).
    pub fn start_websocket(
        &mut self,
        live: &Arc<Live>,
        mut handed: Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> anyhow::Result<()> {
        let rt = live.current();
        for addr in &rt.config.websocket.listen {
            let std = match handed.iter().position(|(c, _)| c == addr) {
                Some(i) => handed.swap_remove(i).1,
                None => bind_reuse_port(*addr)
                    .with_context(|| format!("cannot listen for WebSocket on {addr}"))?,
            };
            std.set_nonblocking(true)?;
            let l = Arc::new(TcpListener::from_std(std)?);
            self.ws_addrs.push(l.local_addr()?);
            if let Ok(mut v) = self.ws_listeners.lock() {
                v.push((*addr, l.clone()));
            }
            self.alive.fetch_add(1, Ordering::SeqCst);
            self.tasks.spawn(guarded_accept(
                crate::net::websocket::accept_loop(
                    l,
                    *addr,
                    live.clone(),
                    self.conns.clone(),
                    self.shutdown.subscribe(),
                ),
                self.stop.subscribe(),
                AliveGuard(self.alive.clone()),
            ));
        }
        Ok(())
    }

    /// Starts accepting bridges on `[link.exit] listen` (bound with
    /// `SO_REUSEPORT`, so a successor process can bind beside this one).
    pub fn start_link(&mut self, live: &Arc<Live>) -> anyhow::Result<()> {
        let rt = live.current();
        let Some(exit) = &rt.config.link.exit else {
            return Ok(());
        };
        let std = bind_reuse_port(exit.listen)
            .with_context(|| format!("cannot listen for links on {}", exit.listen))?;
        std.set_nonblocking(true)?;
        let l = TcpListener::from_std(std)?;
        self.link_addr = Some(l.local_addr()?);
        let sessions = Arc::new(SessionSink {
            live: live.clone(),
            conns: self.conns.clone(),
            shutdown: self.shutdown.subscribe(),
            listener: exit.listen,
        });
        tokio::spawn(crate::link::exit::accept_loop(
            l,
            live.clone(),
            self.stop.subscribe(),
            sessions,
        ));
        Ok(())
    }

    /// Starts accepting on listeners bound elsewhere (systemd, a previous
    /// process); each serves its own local address.
    pub fn start_with(
        live: Arc<Live>,
        listeners: Vec<std::net::TcpListener>,
    ) -> std::io::Result<Self> {
        let labeled = listeners
            .into_iter()
            .map(|l| Ok((l.local_addr()?, l)))
            .collect::<std::io::Result<Vec<_>>>()?;
        Self::start_labeled(live, labeled)
    }

    /// [`Server::start_with`], naming the configured address each listener serves.
    pub fn start_labeled(
        live: Arc<Live>,
        listeners: Vec<(SocketAddr, std::net::TcpListener)>,
    ) -> std::io::Result<Self> {
        let rt = live.current();
        // FakeTLS ServerHello key shares, computed ahead from spare CPU time
        // (once per process; see mtgate_crypto::keyshare).
        mtgate_crypto::keyshare::start_pool(KEY_SHARE_POOL);
        let (tx, rx) = watch::channel(false);
        let (stop, stop_rx) = watch::channel(false);
        let max = rt.config.max_connections;
        let conns = Arc::new(Semaphore::new(max));
        let alive = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let mut local_addrs = Vec::new();
        let mut configured = Vec::new();
        let mut shared = Vec::new();
        for (addr, std_listener) in listeners {
            std_listener.set_nonblocking(true)?;
            let listener = Arc::new(TcpListener::from_std(std_listener)?);
            local_addrs.push(listener.local_addr()?);
            configured.push(addr);
            shared.push(listener.clone());
            alive.fetch_add(1, Ordering::SeqCst);
            tasks.spawn(guarded_accept(
                accept_loop(
                    TcpInbound::new(listener, addr),
                    live.clone(),
                    conns.clone(),
                    rx.clone(),
                ),
                stop_rx.clone(),
                AliveGuard(alive.clone()),
            ));
        }
        // The own site serves for the process's life: connections fronted to
        // it go on through a drain after a takeover. Its WEB proxy streams
        // enter sessions like any client, under the same connection cap.
        if let Some(site) = &rt.site {
            if let Ok(pairs) = crate::net::websocket::Pairs::bind_now() {
                site.attach(crate::web::webproxy::Handoff {
                    sink: Arc::new(SessionSink {
                        live: live.clone(),
                        conns: conns.clone(),
                        shutdown: rx.clone(),
                        listener: site.addr(),
                    }),
                    pairs: Arc::new(pairs),
                });
            }
            tokio::spawn(site.clone().run());
        }
        Ok(Self {
            local_addrs,
            ws_addrs: Vec::new(),
            link_addr: None,
            configured,
            shutdown: tx,
            tasks,
            conns,
            max,
            listeners: Arc::new(Mutex::new(shared)),
            ws_listeners: Arc::default(),
            stop,
            alive,
            drains: rt.drains.clone(),
            upkeep: [
                tokio::spawn(crate::runtime::health_checks(live.clone())),
                tokio::spawn(crate::runtime::warm_upkeep(live)),
            ],
        })
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.max - self.conns.available_permits()
    }

    /// [`Server::active`] from another task.
    pub fn active_counter(&self) -> impl Fn() -> usize + Send + 'static {
        let (conns, max) = (self.conns.clone(), self.max);
        move || max - conns.available_permits()
    }

    /// Duplicates of the listening sockets with the configured address each
    /// serves, for a successor process. Empty once accepting stopped.
    pub fn listener_fds(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        self.listener_source().fds()
    }

    /// A handle that gives out [`Server::listener_fds`] from another task.
    pub fn listener_source(&self) -> ListenerSource {
        ListenerSource {
            configured: self.configured.clone(),
            listeners: self.listeners.clone(),
            ws: self.ws_listeners.clone(),
        }
    }

    /// The watchdog's view of the accept side (see [`AcceptProbe::healthy`]).
    pub fn accept_probe(&self) -> AcceptProbe {
        AcceptProbe {
            stopped: self.stop.subscribe(),
            alive: self.alive.clone(),
            expected: self.local_addrs.len() + self.ws_addrs.len(),
        }
    }

    /// Stops accepting and closes this process's listeners; open sessions go
    /// on. A socket also held by another process (after a handover) stays
    /// open there, so no connection to it is refused. Returns once every
    /// accept loop has ended.
    pub async fn stop_accepting(&mut self) {
        let _ = self.stop.send(true);
        self.upkeep.iter().for_each(tokio::task::JoinHandle::abort);
        while self.tasks.join_next().await.is_some() {}
        if let Ok(mut l) = self.listeners.lock() {
            l.clear();
        }
        if let Ok(mut l) = self.ws_listeners.lock() {
            l.clear();
        }
    }

    /// Waits until no session is left or `deadline` passes; then tells the
    /// remaining sessions to end and gives them a moment to close. Returns the
    /// number of sessions that had to be cut.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        while self.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let cut = self.active();
        if cut > 0 {
            self.cut_sessions().await;
        }
        cut
    }

    /// Tells every session to end now and waits (briefly) for them to close.
    pub async fn cut_sessions(&self) {
        let _ = self.shutdown.send(true);
        self.drains.shutdown_all();
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while self.active() > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops accepting, lets sessions finish for up to `drain`, then ends the rest.
    pub async fn shutdown(mut self, drain: Duration) {
        let deadline = tokio::time::Instant::now() + drain;
        self.stop_accepting().await;
        self.drain(deadline).await;
    }
}

/// Binds a configured address; `[::]` falls back to `0.0.0.0` on hosts
/// without IPv6.
pub fn bind_configured(addr: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let sock = match bind_std(addr) {
        Ok(l) => l,
        Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
            // No IPv6 on this host: fall back to IPv4 on the same port.
            let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
            tracing::warn!(%addr, error = %e, "IPv6 unavailable, listening on IPv4 only");
            bind_std(v4).with_context(|| format!("cannot listen on {v4}"))?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
    };
    Ok(sock)
}

/// Gives out duplicates of a server's listening sockets (see [`Server::listener_fds`]).
#[derive(Clone)]
pub struct ListenerSource {
    configured: Vec<SocketAddr>,
    listeners: Arc<Mutex<Vec<Arc<TcpListener>>>>,
    ws: WsListeners,
}

impl ListenerSource {
    /// Duplicates (`dup`, close-on-exec) of the listeners still open.
    pub fn fds(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        let l = self
            .listeners
            .lock()
            .map_err(|_| std::io::Error::other("listener list poisoned"))?;
        l.iter()
            .zip(&self.configured)
            .map(|(l, c)| {
                let dup = socket2::SockRef::from(l.as_ref()).try_clone()?;
                Ok((*c, std::os::fd::OwnedFd::from(dup)))
            })
            .collect()
    }

    /// Duplicates of the `[websocket]` listeners still open.
    pub fn ws_fds(&self) -> std::io::Result<Vec<(SocketAddr, std::os::fd::OwnedFd)>> {
        let l = self
            .ws
            .lock()
            .map_err(|_| std::io::Error::other("listener list poisoned"))?;
        l.iter()
            .map(|(c, l)| {
                let dup = socket2::SockRef::from(l.as_ref()).try_clone()?;
                Ok((*c, std::os::fd::OwnedFd::from(dup)))
            })
            .collect()
    }
}

/// Whether the accept loops are alive, readable from another task.
#[derive(Clone)]
pub struct AcceptProbe {
    stopped: watch::Receiver<bool>,
    alive: Arc<AtomicUsize>,
    expected: usize,
}

impl AcceptProbe {
    /// Every accept loop is running, or accepting was stopped on purpose.
    pub fn healthy(&self) -> bool {
        *self.stopped.borrow() || self.alive.load(Ordering::SeqCst) == self.expected
    }
}

/// Counts a running accept loop; dropped when the loop ends, even by a panic.
struct AliveGuard(Arc<AtomicUsize>);

impl Drop for AliveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs an accept loop until `stop` turns true. Cancelling `accept` is safe:
/// a connection is either returned by `accept()` (and handed to its session
/// before the loop awaits again) or stays in the kernel queue for whoever
/// accepts next, e.g. the process that took the socket over.
async fn guarded_accept(
    accept: impl std::future::Future<Output = ()>,
    mut stop: watch::Receiver<bool>,
    _alive: AliveGuard,
) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = accept => {}
    }
}

/// Streams that enter sessions from inside the process, under the
/// connection cap: WEB proxy streams (`crate::web::webproxy`) and the
/// client connections a forwarding bridge hands this exit over a link.
struct SessionSink {
    live: Arc<Live>,
    conns: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    listener: SocketAddr,
}

impl SessionSink {
    /// A session for `stream` from `client` (at the cap the stream is
    /// dropped: the client sees it closed).
    fn spawn(
        &self,
        rt: Arc<Runtime>,
        stream: tokio::net::TcpStream,
        client: SocketAddr,
        transport: crate::net::inbound::Transport,
        pin: Option<crate::net::inbound::Pin>,
    ) {
        let Ok(permit) = self.conns.clone().try_acquire_owned() else {
            return;
        };
        let inbound = crate::net::inbound::Inbound {
            stream,
            meta: crate::net::inbound::Meta {
                peer: client,
                listener: self.listener,
                transport,
                vouched: Some(client.ip()),
                pin,
            },
        };
        let sd = self.shutdown.clone();
        tokio::spawn(async move {
            session::serve(inbound, rt, sd).await;
            drop(permit);
        });
    }
}

impl crate::link::exit::Sessions for SessionSink {
    fn serve(&self, stream: tokio::net::TcpStream, client: SocketAddr) {
        let rt = self.live.current();
        self.spawn(
            rt,
            stream,
            client,
            crate::net::inbound::Transport::Link,
            None,
        );
    }
}

impl crate::web::webproxy::mux::StreamSink for SessionSink {
    fn serve(
        &self,
        stream: tokio::net::TcpStream,
        client: SocketAddr,
        credential: &crate::web::webproxy::Credential,
    ) {
        let rt = self.live.current();
        // A user removed since the session opened has no streams.
        let Some(user) = rt.users.iter().position(|u| u.name == credential.user) else {
            return;
        };
        let pin = crate::net::inbound::Pin {
            user: u32::try_from(user).unwrap_or(u32::MAX),
            dd: credential.mode == crate::web::webproxy::WebMode::Dd,
        };
        self.spawn(
            rt,
            stream,
            client,
            crate::net::inbound::Transport::WebProxy,
            Some(pin),
        );
    }
}

async fn accept_loop(
    listener: TcpInbound,
    live: Arc<Live>,
    conns: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        // At the connection cap, stop accepting until a session ends: the
        // next connection waits in the kernel's queue (what an overloaded web
        // server shows), never an accept-and-close a site would not do.
        let Ok(permit) = conns.clone().acquire_owned().await else {
            return;
        };
        let inbound = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let rt = live.current();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            // A forwarding bridge hands the raw connection to its exit (boxed:
            // the task of every session stays its own size).
            match rt.link.clone().filter(|b| b.forwards()) {
                Some(b) => {
                    let wait = rt.config.connect_timeout;
                    // The bridge's own admission first (ACL, rate, reputation,
                    // geo): a flood or a blocked network stops here, not at the exit.
                    let peer = inbound.meta.peer;
                    let admitted = rt.policy.admit(peer.ip(), &mut |reason, enforced| {
                        rt.telemetry.emit(crate::events::Event::PolicyHit {
                            id: 0,
                            reason,
                            enforced,
                            source: peer.ip(),
                        })
                    });
                    drop(rt);
                    if let Ok(source) = admitted {
                        Box::pin(b.forward(inbound.stream, peer, wait)).await;
                        drop(source);
                    }
                }
                None => session::serve(inbound, rt, sd).await,
            }
            drop(permit);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::events::Telemetry;

    fn runtime() -> Arc<Runtime> {
        let cfg = Config::from_toml(
            "[server]\nlisten = [\"127.0.0.1:0\"]\n[tls]\nmask_host = \"127.0.0.1:1\"\n",
            &Overrides::default(),
        )
        .expect("config");
        Arc::new(Runtime::build(cfg, Vec::new(), Telemetry::default()).expect("runtime"))
    }

    #[tokio::test]
    async fn stop_accepting_closes_listeners_and_the_probe_follows() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut s = Server::start_with(Live::new(runtime()), vec![l]).expect("start");
        assert_eq!(s.local_addrs, vec![addr]);
        let probe = s.accept_probe();
        assert!(probe.healthy());
        let fds = s.listener_fds().expect("fds");
        assert_eq!(fds.len(), 1);
        assert_eq!(fds[0].0, addr);
        drop(fds);
        s.stop_accepting().await;
        assert!(probe.healthy(), "stopped on purpose is healthy");
        assert!(s.listener_fds().expect("fds").is_empty());
        // The socket is closed: a connection is refused.
        assert!(std::net::TcpStream::connect(addr).is_err());
    }

    #[test]
    fn a_dead_accept_loop_is_unhealthy() {
        let (_tx, rx) = watch::channel(false);
        let probe = AcceptProbe {
            stopped: rx,
            alive: Arc::new(AtomicUsize::new(1)),
            expected: 2,
        };
        assert!(!probe.healthy());
    }
}
