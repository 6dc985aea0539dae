//! Warm upstream connections: TCP connections to DC targets opened ahead
//! (through the SOCKS5 chain, if any), ready for the proxy's obfuscated2
//! header, so a client's first bytes do not wait for a connect.
//!
//! Off by default (`[upstream.pool] size = 0`). A pooled connection is never
//! older than `max_idle` (set it below the upstream's own timeout for a
//! connection that has sent nothing; Telegram's DCs wait tens of seconds)
//! and is checked before use: one the upstream closed or spoke on is thrown
//! away, never handed to a client. The pool holds at most `size` connections
//! per target, only for targets in service.

use crate::net::connect::Connector;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// `[upstream.pool]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarmConfig {
    /// Connections kept ready per DC target (0: off).
    pub size: usize,
    /// The oldest a pooled connection may be when handed out.
    pub max_idle: Duration,
}

impl Default for WarmConfig {
    fn default() -> Self {
        Self {
            size: 0,
            max_idle: Duration::from_secs(20),
        }
    }
}

/// The largest `size` accepted.
pub const MAX_SIZE: usize = 64;

/// `[upstream.pool]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWarm {
    pub size: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub max_idle: Option<Duration>,
}

impl WarmConfig {
    /// Checks `[upstream.pool]`; an error names the key.
    pub fn from_raw(raw: RawWarm) -> Result<Self, (String, String)> {
        let d = Self::default();
        let size = raw.size.unwrap_or(d.size);
        if size > MAX_SIZE {
            return Err((
                "upstream.pool.size".into(),
                format!("at most {MAX_SIZE} connections per target"),
            ));
        }
        let max_idle = raw.max_idle.unwrap_or(d.max_idle);
        if max_idle < Duration::from_millis(100) || max_idle > Duration::from_secs(600) {
            return Err((
                "upstream.pool.max_idle".into(),
                "use 100ms..10m, below the upstream's own idle timeout".into(),
            ));
        }
        Ok(Self { size, max_idle })
    }
}

/// Counters of the pool since start.
#[derive(Debug, Default)]
pub struct WarmStats {
    /// Connections handed to clients.
    pub used: AtomicU64,
    /// Connections thrown away because the upstream had closed or spoken.
    pub stale: AtomicU64,
    /// Connections thrown away for age.
    pub expired: AtomicU64,
    /// Connections opened ahead.
    pub opened: AtomicU64,
}

/// The pool (shared across reloads).
#[derive(Debug, Default)]
pub struct WarmPool {
    config: Mutex<WarmConfig>,
    idle: Mutex<HashMap<SocketAddr, VecDeque<(TcpStream, Instant)>>>,
    pub stats: WarmStats,
}

/// Whether a connection that has sent nothing is still open and silent.
fn is_fresh(s: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.try_read(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

impl WarmPool {
    pub fn new(config: WarmConfig) -> Self {
        Self {
            config: Mutex::new(config),
            ..Self::default()
        }
    }

    fn config(&self) -> WarmConfig {
        self.config.lock().map(|c| *c).unwrap_or_default()
    }

    /// New settings (a reload); connections beyond the new size go at the
    /// next refill.
    pub fn reconfigure(&self, config: WarmConfig) {
        if let Ok(mut c) = self.config.lock() {
            *c = config;
        }
    }

    /// A checked, pooled connection to `target`, if one is ready.
    pub fn take(&self, target: SocketAddr) -> Option<TcpStream> {
        let max_idle = self.config().max_idle;
        let mut idle = self.idle.lock().ok()?;
        let queue = idle.get_mut(&target)?;
        // Newest last: take from the back, drop what is too old or stale.
        while let Some((s, since)) = queue.pop_back() {
            if since.elapsed() >= max_idle {
                self.stats.expired.fetch_add(1, Relaxed);
                continue;
            }
            if !is_fresh(&s) {
                self.stats.stale.fetch_add(1, Relaxed);
                continue;
            }
            self.stats.used.fetch_add(1, Relaxed);
            return Some(s);
        }
        None
    }

    /// Connections ready for `target` now.
    pub fn ready(&self, target: SocketAddr) -> usize {
        self.idle
            .lock()
            .map(|m| m.get(&target).map_or(0, VecDeque::len))
            .unwrap_or(0)
    }

    /// One round of upkeep: drops expired and stale connections, forgets
    /// targets not in `targets` (each listed once), and opens connections up
    /// to `size` for each.
    pub async fn refill(&self, connector: &Connector, targets: &[SocketAddr]) {
        let cfg = self.config();
        let mut missing = Vec::new();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|t, _| cfg.size > 0 && targets.contains(t));
            for t in targets {
                let q = idle.entry(*t).or_default();
                // Expire early by a margin: a connection must not reach its
                // age limit between this round and the next.
                let limit = cfg.max_idle.saturating_sub(cfg.max_idle / 4);
                // Each dropped connection is counted once, for why it went.
                q.retain(|(s, since)| {
                    if since.elapsed() >= limit {
                        self.stats.expired.fetch_add(1, Relaxed);
                        false
                    } else if !is_fresh(s) {
                        self.stats.stale.fetch_add(1, Relaxed);
                        false
                    } else {
                        true
                    }
                });
                q.truncate(cfg.size);
                if q.len() < cfg.size {
                    missing.push((*t, cfg.size - q.len()));
                }
            }
        }
        for (t, n) in missing {
            for _ in 0..n {
                let Ok(s) = connector.connect(t).await else {
                    // The balancer hears about a dead target from clients
                    // and its own checks; the pool just tries next round.
                    break;
                };
                let _ = s.set_nodelay(true);
                self.stats.opened.fetch_add(1, Relaxed);
                if let Ok(mut idle) = self.idle.lock() {
                    idle.entry(t).or_default().push_back((s, Instant::now()));
                }
            }
        }
    }

    /// How often [`WarmPool::refill`] should run.
    pub fn period(&self) -> Option<Duration> {
        let c = self.config();
        (c.size > 0)
            .then(|| (c.max_idle / 4).clamp(Duration::from_millis(25), Duration::from_secs(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stale_and_old_connections_are_never_handed_out() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push(l.accept().await.unwrap().0);
            }
            v
        });
        let pool = WarmPool::new(WarmConfig {
            size: 3,
            max_idle: Duration::from_millis(400),
        });
        let c = Connector::direct(Duration::from_secs(1));
        pool.refill(&c, &[addr]).await;
        assert_eq!(pool.ready(addr), 3);
        let mut server_side = accepted.await.unwrap();
        // The upstream closes two of them (its idle timeout), speaks on none.
        server_side.truncate(1);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let got = pool.take(addr).expect("the open one");
        assert!(is_fresh(&got));
        assert!(pool.take(addr).is_none(), "closed ones are thrown away");
        assert_eq!(pool.stats.stale.load(Relaxed), 2);
        assert_eq!(pool.stats.used.load(Relaxed), 1);
        // Age: a connection past max_idle is never used.
        let l2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = l2.local_addr().unwrap();
        let _keep = tokio::spawn(async move {
            let mut v = Vec::new();
            while let Ok((s, _)) = l2.accept().await {
                v.push(s);
            }
        });
        pool.refill(&c, &[a2]).await;
        assert_eq!(pool.ready(a2), 3);
        tokio::time::sleep(Duration::from_millis(450)).await;
        assert!(pool.take(a2).is_none());
        assert!(pool.stats.expired.load(Relaxed) >= 3);
    }

    #[test]
    fn config_bounds() {
        assert!(WarmConfig::from_raw(RawWarm {
            size: Some(65),
            max_idle: None
        })
        .is_err());
        assert!(WarmConfig::from_raw(RawWarm {
            size: Some(2),
            max_idle: Some(Duration::from_millis(10))
        })
        .is_err());
        assert_eq!(
            WarmConfig::from_raw(RawWarm::default()).unwrap(),
            WarmConfig::default()
        );
    }
}
