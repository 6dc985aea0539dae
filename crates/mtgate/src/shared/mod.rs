//! State shared across nodes (issue 16), behind a narrow interface.
//!
//! Without `[shared]` nothing here exists at run time: every node keeps its
//! own state and the connection path pays one `Option` check. With it, the
//! first piece shared is the replay window: a handshake that passed the
//! node's own replay cache is also marked in the shared store ([`Backend`];
//! Redis in [`redis`]) with one round trip under a tight timeout, so a
//! handshake recorded on one node and replayed on another is fronted like a
//! stranger.
//!
//! **The local state stays authoritative.** A check that fails or times out
//! lets the handshake through on the node's own cache, marks the store down
//! for [`RETRY`] (no handshake waits on it meanwhile), counts and logs the
//! degradation once, and queues the fingerprint (at most [`PENDING_MAX`]);
//! a background task ([`Shared::run`]) writes the queue to the store when
//! it answers again, so a replay across nodes of a handshake made during the
//! outage is caught after it. Lost in an outage: a replay on another node
//! *during* it, and queued fingerprints past the cap.

pub mod redis;
mod sync;

use serde::Deserialize;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the store is left alone after a failure.
pub const RETRY: Duration = Duration::from_secs(1);
/// Fingerprints kept for the store while it is down.
pub const PENDING_MAX: usize = 65_536;
/// The default per-check timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// `[shared]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShared {
    /// `redis://[:password@]host:port[/db]` (or `rediss://` is refused: not built in).
    pub redis: Option<String>,
    /// This node's name (default: the host name).
    pub node: Option<String>,
    /// Longest wait for the store on a handshake (default 50 ms).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Prefix of every key (default `mtgate`), to share one Redis.
    pub prefix: Option<String>,
    /// Redis Sentinels (`host:port`) that name the master instead of
    /// `redis`'s host; `redis` then gives only the password and database.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The master's name the sentinels know (default `mymaster`).
    pub master: Option<String>,
    /// Redis Cluster nodes (`host:port`) to start from, instead of one server.
    #[serde(default)]
    pub cluster: Vec<String>,
}

/// `[shared]`.
#[derive(Clone, PartialEq, Eq)]
pub struct SharedConfig {
    pub redis: String,
    pub node: String,
    pub timeout: Duration,
    pub prefix: String,
    /// Sentinels naming the master (empty: `redis` is the server).
    pub sentinels: Vec<String>,
    pub master: String,
    /// Redis Cluster nodes (empty: not a cluster).
    pub cluster: Vec<String>,
}

impl std::fmt::Debug for SharedConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("SharedConfig")
            .field("node", &self.node)
            .field("timeout", &self.timeout)
            .field("prefix", &self.prefix)
            .field("sentinels", &self.sentinels)
            .field("master", &self.master)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".into())
}

impl SharedConfig {
    /// `None` without `[shared] redis`; `Err((key, why))` for a bad value.
    pub fn from_raw(raw: RawShared) -> Result<Option<Self>, (&'static str, String)> {
        let Some(url) = raw.redis else {
            if raw.node.is_some()
                || raw.timeout.is_some()
                || raw.prefix.is_some()
                || !raw.sentinels.is_empty()
            {
                return Err(("shared.redis", "the Redis URL (redis://host:port)".into()));
            }
            return Ok(None);
        };
        if !url.starts_with("redis://") {
            return Err(("shared.redis", "a redis://host:port[/db] URL".into()));
        }
        ::redis::Client::open(url.as_str()).map_err(|e| ("shared.redis", e.to_string()))?;
        let node = raw.node.unwrap_or_else(host_name);
        let printable =
            |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic());
        if !printable(&node) {
            return Err(("shared.node", "1..64 printable characters".into()));
        }
        let prefix = raw.prefix.unwrap_or_else(|| "mtgate".into());
        if !printable(&prefix) {
            return Err(("shared.prefix", "1..64 printable characters".into()));
        }
        let timeout = raw.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() || timeout > Duration::from_secs(5) {
            return Err(("shared.timeout", "between 1 ms and 5 s".into()));
        }
        if raw.sentinels.len() > 16
            || raw
                .sentinels
                .iter()
                .any(|s| s.parse::<std::net::SocketAddr>().is_err() && !s.contains(':'))
        {
            return Err(("shared.sentinels", "at most 16 host:port addresses".into()));
        }
        if raw.cluster.len() > 64 || raw.cluster.iter().any(|s| !s.contains(':')) {
            return Err(("shared.cluster", "at most 64 host:port addresses".into()));
        }
        if !raw.cluster.is_empty() && !raw.sentinels.is_empty() {
            return Err(("shared.cluster", "a cluster or sentinels, not both".into()));
        }
        let master = raw.master.unwrap_or_else(|| "mymaster".into());
        if !printable(&master) {
            return Err(("shared.master", "1..64 printable characters".into()));
        }
        Ok(Some(SharedConfig {
            redis: url,
            node,
            timeout,
            prefix,
            sentinels: raw.sentinels,
            master,
            cluster: raw.cluster,
        }))
    }
}

/// Why the store did not answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("shared state: {0}")]
    Store(String),
}

/// A boxed future of the store.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// The shared store: the operations the nodes share state through.
pub trait Backend: Send + Sync {
    /// Marks each fingerprint seen for `ttl`; for each, whether another
    /// handshake had marked it already (a replay).
    fn mark<'a>(&'a self, fps: &'a [[u8; 16]], ttl: Duration) -> StoreFuture<'a, Vec<bool>>;
    /// Publishes this node's heartbeat, its open connections by user and
    /// its recent address keys by user (living `ttl` unless refreshed); the
    /// live nodes, the other live nodes' connections summed by user and
    /// their address keys joined by user.
    fn sync<'a>(
        &'a self,
        node: &'a str,
        mine: &'a NodeState,
        ttl: Duration,
    ) -> StoreFuture<'a, SyncView>;
    /// Adds each user's bytes to the shared usage; for each, the totals of
    /// every node after it (lifetime, current period or 0).
    fn add_usage<'a>(&'a self, deltas: &'a [UsageDelta]) -> StoreFuture<'a, Vec<(u64, u64)>>;
    /// Stores `what`'s content and announces it to every node.
    fn publish<'a>(
        &'a self,
        node: &'a str,
        what: &'a str,
        content: &'a [u8],
    ) -> StoreFuture<'a, ()>;
    /// `what`'s content as last published, if ever.
    fn fetch<'a>(&'a self, what: &'a str) -> StoreFuture<'a, Option<Vec<u8>>>;
    /// The announcements from now on: (node, what), until the store goes.
    fn listen(&self) -> StoreFuture<'_, Announcements>;
    /// Clears `user`'s shared usage: the period starting at `period` (Unix
    /// ms), if given, and unless `period_only` the lifetime total.
    fn reset_usage<'a>(
        &'a self,
        user: &'a str,
        period: Option<i64>,
        period_only: bool,
    ) -> StoreFuture<'a, ()>;
}

/// Takes an announced change: (what, the node that made it, its content).
pub type Take = Arc<dyn Fn(&str, &str, Vec<u8>) + Send + Sync>;

/// A stream of announcements: (the node that made the change, what).
pub type Announcements = Pin<Box<dyn futures_util::Stream<Item = (String, String)> + Send>>;

/// Bytes one node relayed for a user since its last sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageDelta {
    pub user: String,
    pub bytes: u64,
    /// (period start, period end, bytes in it), Unix ms: a calendar quota.
    pub period: Option<(i64, i64, u64)>,
}

/// What this node has told the store of one user's bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Pushed {
    /// The local counters when last pushed.
    life_seen: u64,
    period_seen: u64,
    period_start: i64,
    /// This node's share of the totals.
    life_mine: u64,
    period_mine: u64,
}

/// What a node publishes of itself at each sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeState {
    /// Open connections by user (users with none left out).
    pub conns: Vec<(String, u32)>,
    /// Recent address keys by user under `max_ips`.
    pub ips: Vec<(String, Vec<std::net::IpAddr>)>,
}

/// What the store says of the other nodes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncView {
    /// Every live node, this one included.
    pub nodes: Vec<String>,
    /// Open connections by user on the other live nodes.
    pub remote: std::collections::HashMap<String, u32>,
    /// Recent address keys by user on the other live nodes.
    pub remote_ips: std::collections::HashMap<String, Vec<std::net::IpAddr>>,
}

/// How often a node publishes its connections and reads the others'.
pub const SYNC: Duration = Duration::from_secs(1);
/// A node not heard from for this long is gone (its counts drop out).
pub const NODE_TTL: Duration = Duration::from_secs(5);

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct SharedStats {
    /// Handshakes the store had not seen.
    pub fresh: AtomicU64,
    /// Handshakes another node had seen: fronted as replays.
    pub replays: AtomicU64,
    /// Checks that failed or timed out (the local cache decided).
    pub errors: AtomicU64,
    /// Checks skipped while the store was down.
    pub skipped: AtomicU64,
    /// Fingerprints written to the store after it came back.
    pub reconciled: AtomicU64,
    /// Live nodes at the last sync, this one included (0: never synced).
    pub nodes: AtomicU64,
}

/// The shared state of this node: the store, its health, and the queue of
/// fingerprints to write when it answers again.
pub struct Shared {
    backend: Arc<dyn Backend>,
    pub config: SharedConfig,
    /// How long a replay entry lives (the FakeTLS timestamp window).
    ttl: Duration,
    epoch: Instant,
    /// Monotonic ms (from `epoch`) before which the store is not asked.
    down_until: AtomicU64,
    up: AtomicBool,
    pending: Mutex<VecDeque<[u8; 16]>>,
    /// Monotonic ms of the last sync that reached the store.
    synced: AtomicU64,
    /// Per user under a quota: what this node pushed (the sync task's).
    pushed: Mutex<std::collections::HashMap<String, Pushed>>,
    /// Changes made here the store did not take (it was down): sent before
    /// anything is taken from it again, so an edit made during an outage is
    /// not overwritten by the store's older copy.
    unsent: Mutex<std::collections::HashMap<&'static str, Vec<u8>>>,
    pub stats: SharedStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .field("up", &self.up.load(Relaxed))
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// The shared state over `backend`, entries living `ttl`.
    pub fn new(backend: Arc<dyn Backend>, config: SharedConfig, ttl: Duration) -> Arc<Shared> {
        Arc::new(Shared {
            backend,
            config,
            ttl: ttl.max(Duration::from_secs(1)),
            epoch: Instant::now(),
            down_until: AtomicU64::new(0),
            up: AtomicBool::new(true),
            pending: Mutex::new(VecDeque::new()),
            synced: AtomicU64::new(0),
            pushed: Mutex::default(),
            unsent: Mutex::default(),
            stats: SharedStats::default(),
        })
    }

    /// Over Redis, as `config` says.
    pub fn redis(config: SharedConfig, ttl: Duration) -> Result<Arc<Shared>, BackendError> {
        let backend = redis::RedisBackend::new(&config)?;
        Ok(Self::new(Arc::new(backend), config, ttl))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the store answered the last time it was asked.
    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }

    /// Fingerprints waiting for the store.
    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn queue(&self, fp: [u8; 16]) {
        let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= PENDING_MAX {
            q.pop_front();
        }
        q.push_back(fp);
    }

    fn failed(&self, why: &str) {
        self.stats.errors.fetch_add(1, Relaxed);
        let until = self.now_ms().saturating_add(RETRY.as_millis() as u64);
        self.down_until.store(until, Relaxed);
        if self.up.swap(false, Relaxed) {
            tracing::warn!(
                error = %why,
                node = %self.config.node,
                "shared state unreachable: this node serves with its own state until it answers"
            );
        }
    }

    fn answered(&self) {
        if !self.up.swap(true, Relaxed) {
            tracing::info!(node = %self.config.node, "shared state answers again");
        }
    }

    /// Whether another node already used the handshake of fingerprint `fp`
    /// (a replay to front). Waits at most the configured timeout; when the
    /// store does not answer, `false` (the local cache already decided) and
    /// `fp` is queued for the store.
    pub async fn replayed(&self, fp: [u8; 16]) -> bool {
        if self.now_ms() < self.down_until.load(Relaxed) {
            self.stats.skipped.fetch_add(1, Relaxed);
            self.queue(fp);
            return false;
        }
        let one = [fp];
        match tokio::time::timeout(self.config.timeout, self.backend.mark(&one, self.ttl)).await {
            Ok(Ok(seen)) => {
                self.answered();
                if seen.first().copied().unwrap_or(false) {
                    self.stats.replays.fetch_add(1, Relaxed);
                    true
                } else {
                    self.stats.fresh.fetch_add(1, Relaxed);
                    false
                }
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                self.queue(fp);
                false
            }
            Err(_) => {
                self.failed("timed out");
                self.queue(fp);
                false
            }
        }
    }

    /// Every [`SYNC`], until the process ends: publishes this node's open
    /// connections by user and takes the other nodes' into `users` (their
    /// `max_connections` then count every node), and writes queued
    /// fingerprints once the store answers. Without an answer for
    /// [`NODE_TTL`], the other nodes' counts are dropped: the node goes on
    /// alone on its own counts.
    pub async fn run(self: Arc<Self>, users: Arc<crate::policy::engine::Policy>) {
        // Bytes relayed before this node shared anything (its saved usage
        // included, pushed before a restart) are not pushed again.
        self.baseline(users.users());
        loop {
            tokio::time::sleep(SYNC).await;
            self.sync(users.users()).await;
            self.sync_usage(users.users()).await;
            self.flush().await;
            if self.is_up() {
                self.resend().await;
            }
        }
    }

    /// Stores and announces a change made on this node (in the background;
    /// a store that is down misses it, and the nodes catch up at the next
    /// change or when they subscribe again).
    pub fn announce(self: &Arc<Self>, what: &'static str, content: Vec<u8>) {
        let me = self.clone();
        tokio::spawn(async move { me.send(what, content).await });
    }

    /// Publishes `what`; kept for [`Shared::resend`] if the store fails.
    async fn send(&self, what: &'static str, content: Vec<u8>) -> bool {
        let wait = self.config.timeout.max(Duration::from_millis(500));
        let sent = tokio::time::timeout(
            wait,
            self.backend.publish(&self.config.node, what, &content),
        )
        .await;
        let lock = || self.unsent.lock().unwrap_or_else(|p| p.into_inner());
        match sent {
            Ok(Ok(())) => {
                lock().remove(what);
                true
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                lock().insert(what, content);
                false
            }
            Err(_) => {
                self.failed("timed out");
                lock().insert(what, content);
                false
            }
        }
    }

    /// Clears `user`'s shared usage (a quota reset made here), in the
    /// background; the other nodes reset their own counters when they take
    /// the announcement.
    pub fn reset_usage(self: &Arc<Self>, user: String, period_only: bool) {
        let me = self.clone();
        let period = self
            .pushed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&user)
            .map(|p| p.period_start)
            .filter(|s| *s != 0);
        tokio::spawn(async move {
            let wait = me.config.timeout.max(Duration::from_millis(500));
            let reset = me.backend.reset_usage(&user, period, period_only);
            match tokio::time::timeout(wait, reset).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => me.failed(&e.to_string()),
                Err(_) => me.failed("timed out"),
            }
        });
    }

    /// Sends the changes the store missed; the kinds still unsent.
    pub async fn resend(&self) -> Vec<&'static str> {
        let pending: Vec<(&'static str, Vec<u8>)> = self
            .unsent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .collect();
        let mut left = Vec::new();
        for (what, content) in pending {
            if !self.send(what, content).await {
                left.push(what);
            }
        }
        left
    }

    /// Follows the other nodes' announcements until the process ends: each
    /// change of `whats` another node announces is fetched and given to
    /// `take` (with the node's name); on every (re)subscription the stored
    /// content is given once, so a node that starts or reconnects catches
    /// up. A lost subscription is retried every [`RETRY`].
    pub async fn follow(self: Arc<Self>, whats: &'static [&'static str], take: Take) {
        use futures_util::StreamExt;
        loop {
            if let Ok(mut stream) = self.backend.listen().await {
                // Edits made here while the store was away go first; the
                // store's copy of the others is taken.
                let unsent = self.resend().await;
                for what in whats.iter().filter(|w| !unsent.contains(w)) {
                    if let Ok(Some(c)) = self.backend.fetch(what).await {
                        take(what, "the shared store", c);
                    }
                }
                while let Some((node, what)) = stream.next().await {
                    if node == self.config.node || !whats.contains(&what.as_str()) {
                        continue;
                    }
                    let wait = self.config.timeout.max(Duration::from_millis(500));
                    if let Ok(Ok(Some(c))) =
                        tokio::time::timeout(wait, self.backend.fetch(&what)).await
                    {
                        take(&what, &node, c);
                    }
                }
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// One attempt to write the queue (in batches of 1 000); what the
    /// store took leaves the queue, the rest waits for the next attempt.
    /// Not tried while the store is known to be down.
    pub async fn flush(&self) {
        if self.now_ms() < self.down_until.load(Relaxed) {
            return;
        }
        loop {
            let batch: Vec<[u8; 16]> = {
                let q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                q.iter().take(1000).copied().collect()
            };
            if batch.is_empty() {
                return;
            }
            let wait = self.config.timeout.max(Duration::from_millis(500));
            match tokio::time::timeout(wait, self.backend.mark(&batch, self.ttl)).await {
                Ok(Ok(_)) => {
                    let done: std::collections::HashSet<[u8; 16]> = batch.into_iter().collect();
                    let mut q = self.pending.lock().unwrap_or_else(|p| p.into_inner());
                    let before = q.len();
                    q.retain(|fp| !done.contains(fp));
                    let n = before - q.len();
                    drop(q);
                    self.stats.reconciled.fetch_add(n as u64, Relaxed);
                    self.down_until.store(0, Relaxed);
                    self.answered();
                }
                Ok(Err(e)) => return self.failed(&e.to_string()),
                Err(_) => return self.failed("timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests;
