//! The fronting gate: every connection that ends at the mask site passes
//! here, whatever sent it there (a handshake that is not ours, a replay, or a
//! refusal that came before the client proved a secret: ACL, geo, rate,
//! failures, reputation). A prober must see the website each time, so no such
//! path may end with a reset or an early EOF the site would not send.
//!
//! What keeps a flood from making mtgate open one mask connection per attempt
//! is a budget of mask connections open *at once*, in all and per source (an
//! IPv4 address or an IPv6 /64), `tls.mask_budget` and
//! `tls.mask_budget_per_source`. A connection within it is fronted
//! ([`crate::mask::splice`]); past it, it is **held**: mtgate reads and drops
//! what the client sends and says nothing until the client closes (answered
//! with a FIN, as the site answers a client that gives up) or until
//! `tls.mask_hold_timeout`, the site's own idle timeout, passes (then a FIN).
//! A hold costs an idle connection's few KB and no mask connection; it is
//! what the site shows a silent client, so only a source that keeps more than
//! its budget of connections open at once can ever meet it. See
//! docs/stealth.md "Flood-safe fronting".
//!
//! The table holds one entry per source with a mask connection open, so it
//! never has more than `tls.mask_budget` entries.

use crate::config::mask::MaskBudgetConfig;
use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

/// A source as the budget counts it: an IPv4 address or an IPv6 /64.
fn source_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        // The top bit set keeps IPv6 prefixes apart from IPv4 addresses.
        IpAddr::V6(v6) => (u128::from(v6) & !((1u128 << 64) - 1)) | (1u128 << 127) | 1,
    }
}

/// Figures for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateStats {
    /// Mask connections open now (or being dialed).
    pub open: usize,
    /// Connections held silent now (past the budget).
    pub held: usize,
    /// Connections that met the budget and were held, since start.
    pub over_budget: u64,
    /// The budget in force.
    pub budget: usize,
    /// The most mask connections open at once since start.
    pub peak: usize,
}

#[derive(Default)]
struct Table {
    open: usize,
    peak: usize,
    /// Per source: (decided, speculative) permits open.
    per_source: HashMap<u128, (u32, u32)>,
}

/// The budget of mask connections, shared by every runtime (reloads keep
/// the counts and take the new limits).
pub struct MaskBudget {
    cfg: Mutex<MaskBudgetConfig>,
    table: Mutex<Table>,
    held: AtomicUsize,
    over_budget: AtomicU64,
    /// Woken whenever a permit is given back.
    freed: tokio::sync::Notify,
}

impl std::fmt::Debug for MaskBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaskBudget")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// One open mask connection counted against the budget, until dropped.
#[derive(Debug)]
pub struct MaskPermit {
    budget: Arc<MaskBudget>,
    key: u128,
    speculative: bool,
}

impl Drop for MaskPermit {
    fn drop(&mut self) {
        let mut t = self.budget.lock_table();
        t.open = t.open.saturating_sub(1);
        if let Some(n) = t.per_source.get_mut(&self.key) {
            if self.speculative {
                n.1 = n.1.saturating_sub(1);
            } else {
                n.0 = n.0.saturating_sub(1);
            }
            if *n == (0, 0) {
                t.per_source.remove(&self.key);
            }
        }
        drop(t);
        self.budget.freed.notify_waiters();
    }
}

impl MaskBudget {
    pub fn new(cfg: MaskBudgetConfig) -> Arc<Self> {
        Arc::new(Self {
            cfg: Mutex::new(cfg),
            table: Mutex::new(Table::default()),
            held: AtomicUsize::new(0),
            over_budget: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        })
    }

    fn lock_table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> MaskBudgetConfig {
        *self.cfg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the limits of a reloaded config; open connections stay counted.
    pub fn reconfigure(&self, cfg: MaskBudgetConfig) {
        *self.cfg.lock().unwrap_or_else(|p| p.into_inner()) = cfg;
    }

    /// How long a connection past the budget is held.
    pub fn hold_timeout(&self) -> Duration {
        self.config().hold
    }

    /// A permit for one mask connection from `ip`, if the budget allows.
    ///
    /// A source's permits come from two pools: *decided* (a connection known
    /// not to be a client: fronted now) and *speculative* (the pre-connect of
    /// a connection still handshaking, which a valid client throws away), so
    /// a crowd's slow handshakes never take the slots its failing neighbours
    /// need to be answered by the site. The decided pool holds
    /// `tls.mask_budget_per_source`, a quarter of it (at least 1) when the
    /// source is `suspect` (over its rate, failures or reputation); the
    /// speculative pool half of that (at least 1). The global budget counts
    /// both.
    pub fn try_acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        suspect: bool,
        speculative: bool,
    ) -> Option<MaskPermit> {
        self.try_acquire_at(ip, suspect, speculative, 0)
    }

    /// [`MaskBudget::try_acquire`] with a source's share raised to at least
    /// `floor` (never past the global budget): the own site's WEB proxy
    /// lanes are a TLS connection per stream of one app.
    pub fn try_acquire_at(
        self: &Arc<Self>,
        ip: IpAddr,
        suspect: bool,
        speculative: bool,
        floor: usize,
    ) -> Option<MaskPermit> {
        let cfg = self.config();
        let per_source = cfg.per_source.max(floor.min(cfg.global));
        let decided = if suspect {
            (per_source / 4).max(1)
        } else {
            per_source
        };
        let limit = if speculative {
            (decided / 2).max(1)
        } else {
            decided
        };
        let key = source_key(ip);
        let mut t = self.lock_table();
        if t.open >= cfg.global {
            return None;
        }
        let n = t.per_source.entry(key).or_insert((0, 0));
        let used = if speculative { &mut n.1 } else { &mut n.0 };
        if *used as usize >= limit {
            if *n == (0, 0) {
                t.per_source.remove(&key);
            }
            return None;
        }
        *used += 1;
        t.open += 1;
        t.peak = t.peak.max(t.open);
        Some(MaskPermit {
            budget: self.clone(),
            key,
            speculative,
        })
    }

    /// [`MaskBudget::try_acquire`], waiting up to `wait` for a permit to be
    /// given back when none is free (a slot freed a moment later, the
    /// previous connection's splice still closing, then serves this one).
    pub async fn acquire_within(
        self: &Arc<Self>,
        ip: IpAddr,
        suspect: bool,
        speculative: bool,
        floor: usize,
        wait: Duration,
    ) -> Option<MaskPermit> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between is seen.
            freed.as_mut().enable();
            if let Some(p) = self.try_acquire_at(ip, suspect, speculative, floor) {
                return Some(p);
            }
            if tokio::time::timeout_at(until, freed).await.is_err() {
                return None;
            }
        }
    }

    /// Figures for metrics.
    pub fn stats(&self) -> GateStats {
        let t = self.lock_table();
        GateStats {
            open: t.open,
            peak: t.peak,
            held: self.held.load(Relaxed),
            over_budget: self.over_budget.load(Relaxed),
            budget: self.config().global,
        }
    }

    /// Sources with a mask connection open now (at most the budget).
    pub fn sources(&self) -> usize {
        self.lock_table().per_source.len()
    }
}

/// Counts a hold while it lasts.
struct Holding<'a>(&'a MaskBudget);

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Relaxed);
    }
}

/// How a hold ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldEnd {
    /// The client closed (FIN); answered with a FIN.
    ClientClosed,
    /// The client reset or failed.
    ClientReset,
    /// The site's idle timeout passed; closed with a FIN.
    TimedOut,
}

/// Holds `client` silent: what it sends is read and dropped, nothing is
/// answered, and it is closed with a FIN when the client closes or when the
/// budget's hold timeout passes. `client_eof`: the client already closed.
pub async fn hold(client: TcpStream, client_eof: bool, budget: &MaskBudget) -> HoldEnd {
    budget.over_budget.fetch_add(1, Relaxed);
    budget.held.fetch_add(1, Relaxed);
    let _counted = Holding(budget);
    if client_eof {
        return HoldEnd::ClientClosed;
    }
    let drain = async {
        let mut sink = [0u8; 512];
        loop {
            if client.readable().await.is_err() {
                return HoldEnd::ClientReset;
            }
            match client.try_read(&mut sink) {
                Ok(0) => return HoldEnd::ClientClosed,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {}
                Err(_) => return HoldEnd::ClientReset,
            }
        }
    };
    // Dropping `client` closes it with a FIN (no SO_LINGER was set).
    tokio::time::timeout(budget.hold_timeout(), drain)
        .await
        .unwrap_or(HoldEnd::TimedOut)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(global: usize, per_source: usize) -> Arc<MaskBudget> {
        MaskBudget::new(MaskBudgetConfig {
            global,
            per_source,
            hold: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_floor_raises_a_sources_share_within_the_global_budget() {
        let b = budget(6, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let held: Vec<_> = (0..5)
            .map(|_| {
                b.try_acquire_at(a, false, false, 5)
                    .expect("within the floor")
            })
            .collect();
        assert!(
            b.try_acquire_at(a, false, false, 5).is_none(),
            "the floor is the share"
        );
        assert!(b.try_acquire(a, false, false).is_none(), "no floor: 2");
        drop(held);
        // A suspect source gets a quarter of the raised share; a floor never
        // passes the global budget.
        let s = b.try_acquire_at(a, true, false, 8).expect("suspect");
        assert!(
            b.try_acquire_at(a, true, false, 8).is_none(),
            "8 capped at 6, a quarter: 1"
        );
        drop(s);
        let all: Vec<_> = (0..6)
            .filter_map(|_| b.try_acquire_at(a, false, false, 100))
            .collect();
        assert_eq!(all.len(), 6);
        assert!(b.try_acquire_at(a, false, false, 100).is_none());
    }

    #[test]
    fn per_source_and_global_limits() {
        let b = budget(3, 2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let c: IpAddr = "192.0.2.2".parse().expect("ip");
        let p1 = b.try_acquire(a, false, false).expect("1st");
        let _p2 = b.try_acquire(a, false, false).expect("2nd");
        assert!(b.try_acquire(a, false, false).is_none(), "per-source limit");
        let _p3 = b.try_acquire(c, false, false).expect("other source");
        assert!(
            b.try_acquire("192.0.2.3".parse().expect("ip"), false, false)
                .is_none(),
            "global"
        );
        assert_eq!(b.stats().open, 3);
        drop(p1);
        assert!(b.try_acquire(a, false, false).is_some(), "freed");
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        let b = budget(10, 1);
        let _p = b
            .try_acquire("2001:db8::1".parse().expect("ip"), false, false)
            .expect("v6");
        assert!(b
            .try_acquire("2001:db8::2".parse().expect("ip"), false, false)
            .is_none());
        assert!(b
            .try_acquire("2001:db8:0:1::1".parse().expect("ip"), false, false)
            .is_some());
        let _q = b
            .try_acquire("192.0.2.9".parse().expect("ip"), false, false)
            .expect("v4");
        assert!(b
            .try_acquire("::ffff:192.0.2.9".parse().expect("ip"), false, false)
            .is_none());
    }

    #[test]
    fn suspects_get_a_quarter_of_the_per_source_budget() {
        let b = budget(100, 8);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let p: Vec<_> = (0..2)
            .map(|_| b.try_acquire(a, true, false).expect("suspect"))
            .collect();
        assert!(
            b.try_acquire(a, true, false).is_none(),
            "8 / 4 = 2 for suspects"
        );
        assert!(
            b.try_acquire(a, false, false).is_some(),
            "in good standing: up to 8"
        );
        drop(p);
        let lone = budget(100, 2);
        let one = lone.try_acquire(a, true, false).expect("at least one");
        assert!(lone.try_acquire(a, true, false).is_none());
        drop(one);
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let zero = budget(100, 0);
        assert!(zero.try_acquire(other, false, false).is_none());
        assert_eq!(zero.sources(), 0, "a refusal leaves no empty entry");
    }

    #[test]
    fn speculative_preconnects_never_take_the_decided_slots() {
        let b = budget(100, 4);
        let a: IpAddr = "192.0.2.7".parse().expect("ip");
        let spec: Vec<_> = (0..2)
            .map(|_| b.try_acquire(a, false, true).expect("speculative"))
            .collect();
        assert!(
            b.try_acquire(a, false, true).is_none(),
            "half for pre-connects"
        );
        let decided: Vec<_> = (0..4)
            .map(|_| b.try_acquire(a, false, false).expect("decided"))
            .collect();
        assert!(b.try_acquire(a, false, false).is_none());
        assert_eq!(b.stats().open, 6);
        drop((spec, decided));
        assert_eq!(b.sources(), 0);
    }

    #[test]
    fn the_table_empties_when_permits_drop() {
        let b = budget(100, 100);
        let permits: Vec<_> = (0..50u8)
            .filter_map(|i| b.try_acquire(IpAddr::from([10, 0, 0, i]), false, false))
            .collect();
        assert_eq!(b.sources(), 50);
        drop(permits);
        assert_eq!(b.sources(), 0);
        assert_eq!(b.stats().open, 0);
    }

    #[tokio::test]
    async fn a_waiting_acquire_gets_the_slot_freed_meanwhile() {
        let b = budget(1, 1);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let p = b.try_acquire(a, false, false).expect("first");
        let none = b
            .acquire_within(a, false, false, 0, Duration::from_millis(20))
            .await;
        assert!(none.is_none(), "nothing freed within the wait");
        let b2 = b.clone();
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(p);
        });
        let got = b2
            .acquire_within(a, false, false, 0, Duration::from_secs(5))
            .await;
        assert!(got.is_some(), "the freed slot serves the waiter");
        release.await.expect("join");
    }

    #[tokio::test]
    async fn a_hold_answers_nothing_and_ends_with_fin() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let b = budget(1, 1);
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = l.local_addr().expect("addr");
        let mut c = TcpStream::connect(addr).await.expect("connect");
        let (s, _) = l.accept().await.expect("accept");
        let b2 = b.clone();
        let task = tokio::spawn(async move { hold(s, false, &b2).await });
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.expect("write");
        let mut buf = [0u8; 16];
        // Nothing comes back until the hold timeout (1 s), then a FIN.
        let t0 = std::time::Instant::now();
        let n = c.read(&mut buf).await.expect("a FIN, not a reset");
        assert_eq!(n, 0);
        assert!(t0.elapsed() >= Duration::from_millis(900));
        assert_eq!(task.await.expect("join"), HoldEnd::TimedOut);
        assert_eq!(b.stats().held, 0);
        assert_eq!(b.stats().over_budget, 1);
    }
}
