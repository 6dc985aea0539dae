//! The admin listener's connection table: at most [`MAX_CONNS`] open, at
//! most [`PER_SOURCE`] from one address. A new connection is always
//! accepted; when a cap is reached the oldest connection (of that source, or
//! overall) is closed to make room. Health checks open a fresh connection
//! and are done in milliseconds, so they always get in, however many idle
//! connections someone holds (an idle one waits at most
//! [`super::HEADER_TIMEOUT`] for its request anyway).

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;

/// Admin connections open at once.
pub const MAX_CONNS: usize = 64;
/// Admin connections open at once from one address.
pub const PER_SOURCE: usize = 16;

struct Open {
    id: u64,
    ip: IpAddr,
    evict: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    next: u64,
    open: VecDeque<Open>,
}

/// The table (cheap to clone).
#[derive(Clone, Default)]
pub struct Conns {
    inner: Arc<Mutex<Inner>>,
}

/// One registered connection; resolves [`Slot::evicted`] when closed to make
/// room, and leaves the table when dropped.
pub struct Slot {
    conns: Conns,
    id: u64,
    evicted: oneshot::Receiver<()>,
}

impl Slot {
    /// Resolves when this connection must close to make room.
    pub async fn evicted(&mut self) {
        let _ = (&mut self.evicted).await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.conns.lock();
        if let Some(i) = g.open.iter().position(|o| o.id == self.id) {
            g.open.remove(i);
        }
    }
}

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection from `ip`, closing the oldest one of that
    /// source (at [`PER_SOURCE`]) or overall (at [`MAX_CONNS`]) first.
    pub fn admit(&self, ip: IpAddr) -> Slot {
        self.admit_with(ip, MAX_CONNS, PER_SOURCE)
    }

    fn admit_with(&self, ip: IpAddr, max: usize, per_source: usize) -> Slot {
        let mut g = self.lock();
        let same = g.open.iter().filter(|o| o.ip == ip).count();
        let victim = if same >= per_source {
            g.open.iter().position(|o| o.ip == ip)
        } else if g.open.len() >= max {
            Some(0)
        } else {
            None
        };
        if let Some(old) = victim.and_then(|i| g.open.remove(i)) {
            let _ = old.evict.send(());
        }
        let (tx, rx) = oneshot::channel();
        g.next += 1;
        let id = g.next;
        g.open.push_back(Open { id, ip, evict: tx });
        Slot {
            conns: self.clone(),
            id,
            evicted: rx,
        }
    }

    /// Connections open now.
    pub fn len(&self) -> usize {
        self.lock().open.len()
    }

    /// No connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_oldest_makes_room_per_source_then_overall() {
        let c = Conns::default();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let mut a1 = c.admit_with(a, 4, 2);
        let _a2 = c.admit_with(a, 4, 2);
        let _a3 = c.admit_with(a, 4, 2); // evicts a1 (per source)
        tokio::time::timeout(std::time::Duration::from_secs(1), a1.evicted())
            .await
            .expect("a1 evicted");
        drop(a1);
        assert_eq!(c.len(), 2);
        let mut b1 = c.admit_with(b, 4, 2);
        let _b2 = c.admit_with(b, 4, 2);
        assert_eq!(c.len(), 4);
        let _x = c.admit_with("192.0.2.3".parse().expect("ip"), 4, 2); // evicts the oldest: a2
        assert_eq!(c.len(), 4);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), b1.evicted())
                .await
                .is_err(),
            "b1 is not the oldest"
        );
        drop((b1, _b2, _x, _a3, _a2));
        assert!(c.is_empty());
    }
}
