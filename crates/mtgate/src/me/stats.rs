//! ME figures for operations: link failures (counted by the pool), the
//! fetcher's failures and certificate pin mismatches, the time of the last
//! complete fetch, and ready links per DC. [`MeService::stats`] reads them
//! for one service; [`live`] lists the services of this process so that the
//! admin `/metrics` collector (`admin::me_metrics`) can read them at scrape
//! time without the service naming a metrics backend.
//!
//! [`MeService::stats`]: super::MeService::stats

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

/// Counters the pool bumps; shared by a service and its pool.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Attempts that failed before the TCP connection stood (resolve,
    /// refused, unreachable, connect timeout).
    pub connect_failures: AtomicU64,
    /// Attempts that connected but failed the nonce/key/handshake exchange
    /// (refused, bad frames, closed, timed out): a wrong proxy-secret or NAT
    /// address shows here.
    pub handshake_failures: AtomicU64,
    /// Ready links that were lost afterwards.
    pub lost: AtomicU64,
}

/// One reading of a service's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeStats {
    pub connect_failures: u64,
    pub handshake_failures: u64,
    pub lost: u64,
    /// Files that could not be fetched (network, TLS, status, size, content).
    pub fetch_failures: u64,
    /// Certificates that matched no pin.
    pub pin_mismatches: u64,
    /// Unix time of the last refresh in which every file was fetched and valid.
    pub last_fetch_ok: Option<u64>,
    /// Whether HTTPS fetching is configured.
    pub fetching: bool,
    /// Ready links per DC of the files in force (a link serving several DCs
    /// counts for each), sorted by DC.
    pub ready_by_dc: Vec<(i16, usize)>,
}

impl LinkStats {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

/// Something that can report [`MeStats`] (an `MeService`'s shared state).
pub trait Source: Send + Sync {
    fn stats(&self) -> MeStats;
}

static LIVE: Mutex<Vec<Weak<dyn Source>>> = Mutex::new(Vec::new());

/// Lists `s` for [`live`] while it exists.
pub(crate) fn register(s: &Arc<dyn Source>) {
    let mut l = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    l.retain(|w| w.strong_count() > 0);
    l.push(Arc::downgrade(s));
}

/// The figures of every ME service alive in this process (one in a running
/// proxy; none when `[me]` is off).
pub fn live() -> Vec<MeStats> {
    let l = LIVE.lock().unwrap_or_else(|p| p.into_inner());
    l.iter()
        .filter_map(Weak::upgrade)
        .map(|s| s.stats())
        .collect()
}
