//! The ME connection pool (PROTOCOL §7.9, §7.11).
//!
//! Every distinct middle-end address gets `connections_per_addr` supervisor
//! tasks (when not configured, the files' `min_connections`, see
//! [`MeFiles::links_per_addr`]; a changed count applies to addresses added
//! afterwards); each keeps one link up: open it ([`super::conn::open`]), run it
//! ([`super::mux::run`]) until it ends, then wait a per-address exponential
//! back-off with jitter — after connect failures, handshake failures and
//! losses alike (reset once a link stayed up for a minute) — and try again.
//! Failures are logged once, then as a rate-limited summary. A client is bound
//! to a random ready connection of its DC's cluster (preferred family first).
//! [`Pool::apply`] swaps in re-read files: new addresses get supervisors,
//! removed ones are retired (their links close, and with them their clients).

use super::conn::{self, LinkError, LinkParams};
use super::files::MeFiles;
use super::mux::{self, Bound, ConnEnd, MeConn};
use super::stats::LinkStats;
use crate::config::MeConfig;
use mtgate_proto::me::conf::MeAddr;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// A link that stayed up this long resets its address's back-off.
pub const STABLE: Duration = Duration::from_secs(60);
/// How often a still-failing address is reported.
const FAILURE_REPORT: Duration = Duration::from_secs(60);
/// Ready connections tried per client before giving up.
const BIND_TRIES: usize = 5;

/// Exponential back-off: doubling from `initial` to `max`, each delay drawn
/// uniformly from `[d/2, d]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max: max.max(initial),
            current: initial,
        }
    }

    /// The next delay (jittered); doubles the one after it.
    pub fn fail(&mut self) -> Duration {
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let ms = d.as_millis().min(u128::from(u32::MAX)) as u32;
        Duration::from_millis(u64::from(mtgate_crypto::random_range(ms / 2, ms)))
    }

    pub fn reset(&mut self) {
        self.current = self.initial;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One middle-end address: its ready links and its back-off.
struct AddrState {
    addr: MeAddr,
    /// Set when the address left the files: its supervisors end.
    retired: watch::Sender<bool>,
    ready: Mutex<Vec<Arc<MeConn>>>,
    backoff: Mutex<Backoff>,
    /// Some attempt has finished (so waiting for this address is pointless).
    settled: AtomicBool,
    failures: AtomicU64,
    last_report: Mutex<Option<Instant>>,
}

impl AddrState {
    fn failed(&self, e: &LinkError) {
        let n = self.failures.fetch_add(1, Relaxed) + 1;
        let mut last = lock(&self.last_report);
        let due = last.is_none_or(|t| t.elapsed() >= FAILURE_REPORT);
        if n == 1 || due {
            tracing::warn!(me = %self.addr, failures = n, error = %e, "ME connection attempt failed");
            *last = Some(Instant::now());
        } else {
            tracing::debug!(me = %self.addr, failures = n, error = %e, "ME connection attempt failed");
        }
    }

    fn succeeded(&self) {
        let n = self.failures.swap(0, Relaxed);
        if n > 0 {
            tracing::info!(me = %self.addr, after_failures = n, "ME address reachable again");
        }
        *lock(&self.last_report) = None;
    }
}

/// The files in force and the state of each of their addresses.
struct Snapshot {
    files: MeFiles,
    addrs: HashMap<MeAddr, Arc<AddrState>>,
}

/// The pool: the current snapshot and what outlives it.
pub struct Pool {
    now: RwLock<Arc<Snapshot>>,
    cfg: MeConfig,
    changed: Notify,
    next_conn_id: AtomicU64,
    pid: u16,
    start_time: u32,
    stop: watch::Receiver<bool>,
    env: PoolEnv,
    /// Our address as it went into the keys of the last link of each family
    /// (the learned public address, see [`conn::key_ip`]).
    learned: Mutex<(Option<IpAddr>, Option<IpAddr>)>,
}

/// What the pool gets from outside `[me]`.
#[derive(Debug, Default, Clone)]
pub struct PoolEnv {
    /// `server.public_host`, learned as the key address behind NAT.
    pub public_host: Option<String>,
    /// Failure counters, shared with the service.
    pub stats: Arc<LinkStats>,
}

impl Pool {
    /// Builds the pool and spawns its supervisors on the current runtime.
    pub fn start(
        files: MeFiles,
        cfg: MeConfig,
        stop: watch::Receiver<bool>,
        env: PoolEnv,
    ) -> Arc<Self> {
        let mut seed = [0u8; 8];
        mtgate_crypto::fill_random(&mut seed);
        let pool = Arc::new(Self {
            now: RwLock::new(Arc::new(Snapshot {
                files: files.clone(),
                addrs: HashMap::new(),
            })),
            cfg,
            changed: Notify::new(),
            next_conn_id: AtomicU64::new(u64::from_le_bytes(seed) >> 1),
            pid: std::process::id() as u16,
            start_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as u32)
                .unwrap_or(0),
            stop,
            env,
            learned: Mutex::new((None, None)),
        });
        pool.apply(files);
        pool
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.now.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The files in force.
    pub fn files(&self) -> MeFiles {
        self.snapshot().files.clone()
    }

    /// Puts `files` in force: supervisors for new addresses, retirement for
    /// addresses no longer listed; unchanged addresses keep their links.
    pub fn apply(self: &Arc<Self>, files: MeFiles) {
        let old = self.snapshot();
        let per_addr = files.links_per_addr(&self.cfg);
        let mut addrs = HashMap::new();
        for a in files.all_addrs() {
            if let Some(st) = old.addrs.get(&a) {
                addrs.insert(a, st.clone());
                continue;
            }
            let st = Arc::new(AddrState {
                addr: a.clone(),
                retired: watch::channel(false).0,
                ready: Mutex::new(Vec::new()),
                backoff: Mutex::new(Backoff::new(self.cfg.backoff_initial, self.cfg.backoff_max)),
                settled: AtomicBool::new(false),
                failures: AtomicU64::new(0),
                last_report: Mutex::new(None),
            });
            for _ in 0..per_addr {
                tokio::spawn(supervise(self.clone(), st.clone()));
            }
            addrs.insert(a, st);
        }
        for (a, st) in &old.addrs {
            if !addrs.contains_key(a) {
                tracing::info!(me = %a, "ME address no longer listed; closing its connections");
                st.retired.send_replace(true);
            }
        }
        *self.now.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Snapshot { files, addrs });
        self.changed.notify_waiters();
    }

    /// Ready links over all addresses.
    pub fn ready(&self) -> usize {
        self.snapshot()
            .addrs
            .values()
            .map(|s| lock(&s.ready).len())
            .sum()
    }

    /// Ready links per DC of the files in force, sorted by DC.
    pub fn ready_by_dc(&self) -> Vec<(i16, usize)> {
        let snap = self.snapshot();
        let mut out: Vec<(i16, usize)> = snap
            .files
            .clusters
            .iter()
            .map(|(dc, addrs)| {
                let n = addrs
                    .iter()
                    .filter_map(|a| snap.addrs.get(a))
                    .map(|s| lock(&s.ready).len())
                    .sum();
                (*dc, n)
            })
            .collect();
        out.sort_unstable();
        out.dedup_by_key(|(dc, _)| *dc);
        out
    }

    /// The address of ours the last link of `local`'s family put in its keys,
    /// if that differs from `local` (learned behind NAT); else `local`.
    pub fn learned_ip(&self, local: IpAddr) -> IpAddr {
        let l = lock(&self.learned);
        let v4 = match local {
            IpAddr::V4(_) => true,
            IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        };
        let got = if v4 { l.0 } else { l.1 };
        got.unwrap_or(local)
    }

    /// Binds a client of `dc` to a ready link. While the cluster's addresses
    /// are still on their first attempt, waits (up to the handshake timeout)
    /// for one to come up; afterwards answers at once.
    pub async fn bind(&self, dc: i16, prefer_v6: bool) -> Option<Bound> {
        let deadline = tokio::time::Instant::now() + self.cfg.handshake_timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let snap = self.snapshot();
            let addrs = snap.files.addrs_for(dc)?;
            if let Some(b) = self.try_bind(&snap, addrs, prefer_v6) {
                return Some(b);
            }
            let settled = addrs
                .iter()
                .all(|a| snap.addrs.get(a).is_none_or(|s| s.settled.load(Relaxed)));
            if settled || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    fn try_bind(&self, snap: &Snapshot, addrs: &[MeAddr], prefer_v6: bool) -> Option<Bound> {
        let (mut preferred, mut other) = (Vec::new(), Vec::new());
        for a in addrs {
            let Some(st) = snap.addrs.get(a) else {
                continue;
            };
            for c in lock(&st.ready).iter() {
                let v6 = match c.peer.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
                    IpAddr::V4(_) => false,
                };
                if v6 == prefer_v6 {
                    preferred.push(c.clone());
                } else {
                    other.push(c.clone());
                }
            }
        }
        for list in [&mut preferred, &mut other] {
            for _ in 0..BIND_TRIES {
                if list.is_empty() {
                    break;
                }
                let i = mtgate_crypto::random_range(0, list.len() as u32 - 1) as usize;
                let id = self.next_conn_id.fetch_add(1, Relaxed);
                match list[i].bind(id) {
                    Some(b) => return Some(b),
                    None => {
                        list.swap_remove(i);
                    }
                }
            }
        }
        None
    }

    fn params<'a>(&'a self, snap: &'a Snapshot) -> LinkParams<'a> {
        LinkParams {
            secret: &snap.files.secret,
            nat_ip: self.cfg.nat_ip,
            public_host: self.env.public_host.as_deref(),
            offer_crc32c: self.cfg.crc32c,
            timeout: self.cfg.handshake_timeout,
            pid: self.pid,
            start_time: self.start_time,
        }
    }
}

/// Resolves when the pool stops or `st` is retired.
async fn ended(mut stop: watch::Receiver<bool>, mut retired: watch::Receiver<bool>) {
    tokio::select! {
        _ = stop.wait_for(|s| *s) => {}
        _ = retired.wait_for(|s| *s) => {}
    }
}

async fn supervise(pool: Arc<Pool>, st: Arc<AddrState>) {
    let (stop, retired) = (pool.stop.clone(), st.retired.subscribe());
    let ended = || ended(stop.clone(), retired.clone());
    loop {
        if *stop.borrow() || *retired.borrow() {
            return;
        }
        let snap = pool.snapshot();
        let params = pool.params(&snap);
        let attempt = tokio::select! {
            r = conn::open(&st.addr, &params) => r,
            _ = ended() => return,
        };
        drop(snap);
        let delay = match attempt {
            Ok(link) => {
                let (conn, up) = MeConn::new(
                    link.peer,
                    pool.cfg.queue_size,
                    pool.cfg.max_clients_per_connection,
                );
                st.succeeded();
                {
                    let mut l = lock(&pool.learned);
                    if link.key_ip.is_ipv4() {
                        l.0 = Some(link.key_ip);
                    } else {
                        l.1 = Some(link.key_ip);
                    }
                }
                lock(&st.ready).push(conn.clone());
                st.settled.store(true, Relaxed);
                pool.changed.notify_waiters();
                tracing::info!(me = %st.addr, local = %link.local, checksum = ?link.checksum, "ME connection ready");
                let since = Instant::now();
                let end = mux::run(
                    conn.clone(),
                    link.stream,
                    link.tx,
                    link.rx,
                    up,
                    pool.cfg.ping_interval,
                    ended(),
                )
                .await;
                lock(&st.ready).retain(|c| !Arc::ptr_eq(c, &conn));
                pool.changed.notify_waiters();
                if matches!(end, ConnEnd::Shutdown) {
                    return;
                }
                LinkStats::bump(&pool.env.stats.lost);
                let lived = since.elapsed();
                tracing::warn!(me = %st.addr, lived_s = lived.as_secs(), reason = %end, "ME connection lost; its clients were closed");
                let mut b = lock(&st.backoff);
                if lived >= STABLE {
                    b.reset();
                }
                b.fail()
            }
            Err(e) => {
                st.settled.store(true, Relaxed);
                pool.changed.notify_waiters();
                st.failed(&e);
                let s = &pool.env.stats;
                LinkStats::bump(if e.is_connect() {
                    &s.connect_failures
                } else {
                    &s.handshake_failures
                });
                lock(&st.backoff).fail()
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = ended() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(1000), Duration::from_millis(5000));
        let want = [1000u64, 2000, 4000, 5000, 5000];
        for w in want {
            let d = b.fail().as_millis() as u64;
            assert!((w / 2..=w).contains(&d), "{d} not in [{}, {w}]", w / 2);
        }
        b.reset();
        assert!(b.fail() <= Duration::from_millis(1000));
    }
}
