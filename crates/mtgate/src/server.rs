//! Listeners and the accept loop (DESIGN §1 "accept").
//!
//! Each configured address gets a listener; `[::]` is bound dual-stack
//! (IPV6_V6ONLY off) so IPv4 and IPv6 clients share one port. A semaphore caps
//! concurrent connections (a connection over the cap is closed at once);
//! accept errors such as EMFILE back off instead of spinning. Shutdown stops
//! accepting and tells sessions to end.

use crate::runtime::{Live, Runtime};
use crate::session;
use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// A running server.
pub struct Server {
    pub local_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: JoinSet<()>,
    conns: Arc<Semaphore>,
    max: usize,
}

/// Binds a listening socket (dual-stack for the IPv6 unspecified address).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(!addr.ip().is_unspecified())?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    TcpListener::from_std(sock.into())
}

impl Server {
    /// Binds every listener and starts accepting with `rt` (never reloaded).
    pub async fn start(rt: Arc<Runtime>) -> anyhow::Result<Self> {
        Self::start_live(Live::new(rt)).await
    }

    /// Binds every listener and starts accepting; each new connection gets the
    /// runtime `live` holds at that moment (a reload swaps it).
    pub async fn start_live(live: Arc<Live>) -> anyhow::Result<Self> {
        let rt = live.current();
        let (tx, rx) = watch::channel(false);
        let max = rt.config.max_connections;
        let conns = Arc::new(Semaphore::new(max));
        let mut tasks = JoinSet::new();
        let mut local_addrs = Vec::new();
        for addr in &rt.config.listen {
            let listener = match bind(*addr) {
                Ok(l) => l,
                Err(e) if addr.ip().is_unspecified() && addr.is_ipv6() => {
                    // No IPv6 on this host: fall back to IPv4 on the same port.
                    let v4 = SocketAddr::from(([0, 0, 0, 0], addr.port()));
                    tracing::warn!(%addr, error = %e, "IPv6 unavailable, listening on IPv4 only");
                    bind(v4).with_context(|| format!("cannot listen on {v4}"))?
                }
                Err(e) => return Err(e).with_context(|| format!("cannot listen on {addr}")),
            };
            let local = listener.local_addr()?;
            local_addrs.push(local);
            tasks.spawn(accept_loop(
                listener,
                live.clone(),
                conns.clone(),
                rx.clone(),
            ));
        }
        Ok(Self {
            local_addrs,
            shutdown: tx,
            tasks,
            conns,
            max,
        })
    }

    /// Connections currently open.
    pub fn active(&self) -> usize {
        self.max - self.conns.available_permits()
    }

    /// Stops accepting, asks sessions to end, and waits up to `drain` for them.
    pub async fn shutdown(mut self, drain: Duration) {
        let _ = self.shutdown.send(true);
        self.tasks.abort_all();
        let deadline = tokio::time::Instant::now() + drain;
        while self.active() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    live: Arc<Live>,
    conns: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(5);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection cap reached; closing");
            drop(stream);
            continue;
        };
        let rt = live.current();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            session::serve(stream, peer, rt, sd).await;
            drop(permit);
        });
    }
}
