//! Where a running process keeps its admin listener, so that health and
//! metrics answer throughout a zero-downtime upgrade.
//!
//! On `run --takeover` the old process hands its admin socket over with the
//! client listeners ([`crate::handover`]); the new one serves on it at once
//! (the kernel socket never closes, so no probe is refused). When nothing was
//! handed over and the address is still taken (an old process that did not
//! offer it, or one still exiting), binding is retried with back-off instead
//! of giving up, so the listener comes back by itself.

use super::{AdminServer, AdminState};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// First and largest pause between bind attempts while the address is in use.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(2);

/// The admin listener of this process (or the task still trying to bind it).
pub struct AdminSlot {
    server: Arc<Mutex<Option<AdminServer>>>,
    configured: Option<SocketAddr>,
    retry: Option<tokio::task::JoinHandle<()>>,
}

impl AdminSlot {
    /// A slot with no listener yet, for `configured` (`None`: admin disabled).
    pub fn empty(configured: Option<SocketAddr>) -> Self {
        Self {
            server: Arc::new(Mutex::new(None)),
            configured,
            retry: None,
        }
    }

    /// Starts the admin listener for `configured` (`None`: admin disabled).
    /// `handed` is a socket the replaced process gave us with the address it
    /// was configured for; it is used when that address is still ours.
    pub async fn start(
        configured: Option<SocketAddr>,
        handed: Option<(SocketAddr, std::net::TcpListener)>,
        state: Arc<AdminState>,
    ) -> Self {
        let mut slot = Self::empty(configured);
        slot.fill(handed, state).await;
        slot
    }

    /// Starts serving: on `handed` when it was configured for our address,
    /// else on a socket bound now (retried in the background while the
    /// address is in use). A handed-over socket should be filled only once
    /// this process is ready: until then the old process answers on it, and
    /// connections that arrive between its close and our first accept wait in
    /// the socket's queue, so no probe is refused or told "starting".
    pub async fn fill(
        &mut self,
        handed: Option<(SocketAddr, std::net::TcpListener)>,
        state: Arc<AdminState>,
    ) {
        let Some(addr) = self.configured else {
            return;
        };
        if let Some((was, listener)) = handed.filter(|(was, _)| *was == addr) {
            match AdminServer::from_std(listener, state.clone()) {
                Ok(a) => {
                    tracing::info!(addr = %a.local_addr, configured = %was, "admin listener (metrics, health) taken over");
                    self.put(a);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve the handed-over admin socket; binding anew")
                }
            }
        }
        match AdminServer::start(addr, state.clone()).await {
            Ok(a) => {
                tracing::info!(addr = %a.local_addr, "admin listener (metrics, health) started");
                self.put(a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, error = %e, "cannot start the admin listener yet; retrying until the address is free");
                self.retry = Some(tokio::spawn(retry_bind(addr, state, self.server.clone())));
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot start the admin listener; continuing without it");
            }
        }
    }

    fn put(&self, a: AdminServer) {
        if let Ok(mut s) = self.server.lock() {
            *s = Some(a);
        }
    }

    /// The local address, once bound.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.lock().ok()?.as_ref().map(|a| a.local_addr)
    }

    /// What a takeover offer needs: a cloneable handle that gives out a
    /// duplicate of the listening socket while there is one.
    pub fn offer_source(&self) -> AdminOffer {
        AdminOffer {
            server: self.server.clone(),
            configured: self.configured,
        }
    }

    /// Stops accepting here (after a takeover the new process answers on the
    /// same socket) and stops any bind retries.
    pub fn close(&mut self) {
        if let Some(t) = self.retry.take() {
            t.abort();
        }
        if let Ok(mut s) = self.server.lock() {
            s.take();
        }
    }
}

impl Drop for AdminSlot {
    fn drop(&mut self) {
        self.close();
    }
}

/// Gives out duplicates of the admin socket for a takeover offer.
#[derive(Clone)]
pub struct AdminOffer {
    server: Arc<Mutex<Option<AdminServer>>>,
    configured: Option<SocketAddr>,
}

impl AdminOffer {
    /// A duplicate of the listening socket with its configured address;
    /// `None` while there is none (admin disabled, not yet bound, closed).
    #[cfg(unix)]
    pub fn offer(&self) -> Option<std::io::Result<(SocketAddr, std::os::fd::OwnedFd)>> {
        let configured = self.configured?;
        let guard = self.server.lock().ok()?;
        let a = guard.as_ref()?;
        Some(a.dup_fd().map(|fd| (configured, fd)))
    }
}

async fn retry_bind(
    addr: SocketAddr,
    state: Arc<AdminState>,
    server: Arc<Mutex<Option<AdminServer>>>,
) {
    let mut pause = RETRY_FIRST;
    loop {
        tokio::time::sleep(pause).await;
        match AdminServer::start(addr, state.clone()).await {
            Ok(a) => {
                tracing::info!(addr = %a.local_addr, "admin listener (metrics, health) started after retrying");
                if let Ok(mut s) = server.lock() {
                    *s = Some(a);
                }
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                pause = (pause * 2).min(RETRY_MAX);
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot start the admin listener; giving up");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::Metrics;

    fn state() -> Arc<AdminState> {
        AdminState::new(Arc::new(Metrics::new(["alice"])))
    }

    #[tokio::test]
    async fn a_taken_address_is_retried_until_free() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = holder.local_addr().expect("addr");
        let slot = AdminSlot::start(Some(addr), None, state()).await;
        assert_eq!(slot.local_addr(), None, "the address is still taken");
        drop(holder);
        let t0 = std::time::Instant::now();
        while slot.local_addr().is_none() && t0.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            slot.local_addr(),
            Some(addr),
            "bound once the address was free"
        );
    }

    #[tokio::test]
    async fn a_handed_socket_is_served_only_for_the_same_configured_address() {
        let handed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = handed.local_addr().expect("addr");
        let other: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        // Configured for another address: the handed socket is not used.
        let slot = AdminSlot::start(Some(other), Some((local, handed)), state()).await;
        assert_ne!(slot.local_addr(), Some(local));
        let handed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let local = handed.local_addr().expect("addr");
        let slot = AdminSlot::start(Some(local), Some((local, handed)), state()).await;
        assert_eq!(slot.local_addr(), Some(local));
        let offer = slot.offer_source();
        assert!(
            offer.offer().is_some_and(|r| r.is_ok()),
            "offered on takeover"
        );
        let mut slot = slot;
        slot.close();
        assert!(offer.offer().is_none(), "nothing to offer once closed");
    }
}
