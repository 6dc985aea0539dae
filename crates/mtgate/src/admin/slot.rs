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
    /// Starts the admin listener for `configured` (`None`: admin disabled).
    /// `handed` is a socket the replaced process gave us with the address it
    /// was configured for; it is used when that address is still ours.
    pub async fn start(
        configured: Option<SocketAddr>,
        handed: Option<(SocketAddr, std::net::TcpListener)>,
        state: Arc<AdminState>,
    ) -> Self {
        let server = Arc::new(Mutex::new(None));
        let mut slot = Self {
            server: server.clone(),
            configured,
            retry: None,
        };
        let Some(addr) = configured else {
            return slot;
        };
        if let Some((was, listener)) = handed.filter(|(was, _)| *was == addr) {
            match AdminServer::from_std(listener, state.clone()) {
                Ok(a) => {
                    tracing::info!(addr = %a.local_addr, configured = %was, "admin listener (metrics, health) taken over");
                    slot.put(a);
                    return slot;
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "cannot serve the handed-over admin socket; binding anew")
                }
            }
        }
        match AdminServer::start(addr, state.clone()).await {
            Ok(a) => {
                tracing::info!(addr = %a.local_addr, "admin listener (metrics, health) started");
                slot.put(a);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                tracing::warn!(%addr, error = %e, "cannot start the admin listener yet; retrying until the address is free");
                slot.retry = Some(tokio::spawn(retry_bind(addr, state, server)));
            }
            Err(e) => {
                tracing::error!(%addr, error = %e, "cannot start the admin listener; continuing without it");
            }
        }
        slot
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
