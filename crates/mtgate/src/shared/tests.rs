//! The shared state's rules over an in-memory store that can be made slow
//! or broken: replays across "nodes" found, a store that fails or stalls
//! never holds a handshake past the timeout, what it missed is written when
//! it answers again.

use super::*;
use std::collections::HashSet;

/// An in-memory store shared by every node given it.
#[derive(Default)]
struct Memory {
    seen: Mutex<HashSet<[u8; 16]>>,
    conns: Mutex<std::collections::BTreeMap<String, NodeState>>,
    usage: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    managed: Mutex<std::collections::HashMap<String, Vec<u8>>>,
    broken: AtomicBool,
    stall: AtomicBool,
}

impl Backend for Memory {
    fn mark<'a>(&'a self, fps: &'a [[u8; 16]], _ttl: Duration) -> StoreFuture<'a, Vec<bool>> {
        Box::pin(async move {
            if self.stall.load(Relaxed) {
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            if self.broken.load(Relaxed) {
                return Err(BackendError::Store("connection refused".into()));
            }
            let mut s = self.seen.lock().unwrap();
            Ok(fps.iter().map(|f| !s.insert(*f)).collect())
        })
    }

    fn sync<'a>(
        &'a self,
        node: &'a str,
        mine: &'a NodeState,
        _ttl: Duration,
    ) -> StoreFuture<'a, SyncView> {
        Box::pin(async move {
            if self.broken.load(Relaxed) {
                return Err(BackendError::Store("connection refused".into()));
            }
            let mut all = self.conns.lock().unwrap();
            all.insert(node.to_owned(), mine.clone());
            let mut view = SyncView {
                nodes: all.keys().cloned().collect(),
                ..SyncView::default()
            };
            for (_, state) in all.iter().filter(|(n, _)| n.as_str() != node) {
                for (u, c) in &state.conns {
                    *view.remote.entry(u.clone()).or_insert(0) += c;
                }
                for (u, keys) in &state.ips {
                    view.remote_ips.entry(u.clone()).or_default().extend(keys);
                }
            }
            Ok(view)
        })
    }

    fn add_usage<'a>(&'a self, deltas: &'a [UsageDelta]) -> StoreFuture<'a, Vec<(u64, u64)>> {
        Box::pin(async move {
            if self.broken.load(Relaxed) {
                return Err(BackendError::Store("connection refused".into()));
            }
            let mut all = self.usage.lock().unwrap();
            Ok(deltas
                .iter()
                .map(|d| {
                    let e = all.entry(d.user.clone()).or_default();
                    e.0 += d.bytes;
                    e.1 += d.period.map_or(0, |p| p.2);
                    *e
                })
                .collect())
        })
    }

    fn publish<'a>(
        &'a self,
        _node: &'a str,
        what: &'a str,
        content: &'a [u8],
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            if self.broken.load(Relaxed) {
                return Err(BackendError::Store("connection refused".into()));
            }
            self.managed
                .lock()
                .unwrap()
                .insert(what.to_owned(), content.to_vec());
            Ok(())
        })
    }

    fn fetch<'a>(&'a self, what: &'a str) -> StoreFuture<'a, Option<Vec<u8>>> {
        Box::pin(async move { Ok(self.managed.lock().unwrap().get(what).cloned()) })
    }

    fn listen(&self) -> StoreFuture<'_, Announcements> {
        Box::pin(async move { Err(BackendError::Store("no announcements here".into())) })
    }

    fn reset_usage<'a>(
        &'a self,
        user: &'a str,
        _period: Option<i64>,
        period_only: bool,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut all = self.usage.lock().unwrap();
            if let Some(e) = all.get_mut(user) {
                e.1 = 0;
                if !period_only {
                    e.0 = 0;
                }
            }
            Ok(())
        })
    }
}

fn node(store: &Arc<Memory>, name: &str) -> Arc<Shared> {
    let cfg = SharedConfig {
        redis: "redis://127.0.0.1:1".into(),
        node: name.into(),
        timeout: Duration::from_millis(20),
        prefix: "t".into(),
        sentinels: Vec::new(),
        master: "mymaster".into(),
        cluster: Vec::new(),
    };
    Shared::new(store.clone(), cfg, Duration::from_secs(600))
}

#[tokio::test]
async fn a_handshake_seen_on_one_node_is_a_replay_on_another() {
    let store = Arc::new(Memory::default());
    let (a, b) = (node(&store, "a"), node(&store, "b"));
    assert!(!a.replayed([1; 16]).await);
    assert!(b.replayed([1; 16]).await);
    assert!(!b.replayed([2; 16]).await);
    assert_eq!(a.stats.fresh.load(Relaxed), 1);
    assert_eq!(b.stats.replays.load(Relaxed), 1);
}

#[tokio::test]
async fn a_broken_or_stalled_store_never_holds_a_handshake_and_is_caught_up() {
    let store = Arc::new(Memory::default());
    let (a, b) = (node(&store, "a"), node(&store, "b"));
    store.stall.store(true, Relaxed);
    let t = Instant::now();
    assert!(!a.replayed([3; 16]).await, "the local cache decides");
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(!a.is_up());
    // While down, the store is not asked at all.
    let t = Instant::now();
    assert!(!a.replayed([4; 16]).await);
    assert!(t.elapsed() < Duration::from_millis(10));
    assert_eq!(a.stats.skipped.load(Relaxed), 1);
    assert_eq!(a.pending(), 2);
    // Broken rather than slow: the same.
    store.stall.store(false, Relaxed);
    store.broken.store(true, Relaxed);
    a.down_until.store(0, Relaxed);
    a.flush().await;
    assert_eq!(a.pending(), 2, "kept for later");
    // Back: the queue is written, and a replay elsewhere is caught.
    store.broken.store(false, Relaxed);
    a.down_until.store(0, Relaxed);
    a.flush().await;
    assert_eq!((a.pending(), a.is_up()), (0, true));
    assert_eq!(a.stats.reconciled.load(Relaxed), 2);
    assert!(b.replayed([3; 16]).await);
    assert!(b.replayed([4; 16]).await);
}

#[tokio::test]
async fn the_queue_is_bounded() {
    let store = Arc::new(Memory::default());
    store.broken.store(true, Relaxed);
    let a = node(&store, "a");
    for i in 0..(PENDING_MAX + 10) {
        let mut fp = [0u8; 16];
        fp[..8].copy_from_slice(&(i as u64).to_le_bytes());
        a.queue(fp);
    }
    assert_eq!(a.pending(), PENDING_MAX);
}

#[test]
fn config_is_checked() {
    let raw = |s: &str| -> RawShared { toml::from_str(s).unwrap() };
    assert_eq!(SharedConfig::from_raw(raw("")).unwrap(), None);
    let ok = SharedConfig::from_raw(raw("redis = \"redis://127.0.0.1:6379/2\"\nnode = \"a\""))
        .unwrap()
        .unwrap();
    assert_eq!((ok.node.as_str(), ok.prefix.as_str()), ("a", "mtgate"));
    assert_eq!(ok.timeout, DEFAULT_TIMEOUT);
    for (bad, key) in [
        ("node = \"a\"", "shared.redis"),
        ("redis = \"http://x\"", "shared.redis"),
        (
            "redis = \"redis://h:1\"\nnode = \"has space\"",
            "shared.node",
        ),
        (
            "redis = \"redis://h:1\"\ntimeout = \"10s\"",
            "shared.timeout",
        ),
    ] {
        assert_eq!(
            SharedConfig::from_raw(raw(bad)).unwrap_err().0,
            key,
            "{bad}"
        );
    }
    // The URL's password is not printed.
    let secret = SharedConfig::from_raw(raw("redis = \"redis://:hunter2@h:1\"")).unwrap();
    assert!(!format!("{secret:?}").contains("hunter2"));
}

#[tokio::test]
async fn max_connections_count_every_nodes_connections() {
    use crate::config::UserLimits;
    use crate::policy::users::{UserRefusal, UserTable};
    let store = Arc::new(Memory::default());
    let (a, b) = (node(&store, "a"), node(&store, "b"));
    let table = || {
        let t = UserTable::new(chrono_tz::UTC, crate::policy::clock::SystemClock::shared());
        let limits = UserLimits {
            max_connections: Some(2),
            ..Default::default()
        };
        t.reconfigure(&[("u".to_owned(), limits)]);
        t
    };
    let (ta, tb) = (table(), table());
    let ip = "192.0.2.1".parse().unwrap();
    let on_a = ta.admit("u", ip).expect("first on A");
    a.sync(&ta).await;
    b.sync(&tb).await;
    assert_eq!(b.stats.nodes.load(Relaxed), 2);
    let on_b = tb.admit("u", ip).expect("second, on B");
    assert!(matches!(
        tb.admit("u", ip),
        Err(UserRefusal::TooManyConnections)
    ));
    b.sync(&tb).await;
    a.sync(&ta).await;
    assert!(matches!(
        ta.admit("u", ip),
        Err(UserRefusal::TooManyConnections)
    ));
    // A connection closes on A: once the nodes sync, B may take another.
    drop(on_a);
    a.sync(&ta).await;
    b.sync(&tb).await;
    let again = tb.admit("u", ip).expect("room again");
    drop((on_b, again));
}

#[tokio::test]
async fn quotas_count_every_nodes_bytes_and_survive_an_outage() {
    use crate::config::UserLimits;
    use crate::policy::users::{Charge, Dir, UserTable};
    let store = Arc::new(Memory::default());
    let (a, b) = (node(&store, "a"), node(&store, "b"));
    let table = || {
        let t = UserTable::new(chrono_tz::UTC, crate::policy::clock::SystemClock::shared());
        let limits = UserLimits {
            quota: Some(1_000),
            ..Default::default()
        };
        t.reconfigure(&[("u".to_owned(), limits)]);
        t
    };
    let (ta, tb) = (table(), table());
    a.baseline(&ta);
    b.baseline(&tb);
    let ip = "192.0.2.1".parse().unwrap();
    let la = ta.admit("u", ip).expect("A");
    let lb = tb.admit("u", ip).expect("B");
    assert_eq!(la.charge(Dir::Up, 600), Charge::Ok);
    a.sync_usage(&ta).await;
    b.sync_usage(&tb).await;
    // B knows A's 600: 300 more is fine, the next 100 reaches the quota.
    assert_eq!(lb.charge(Dir::Down, 300), Charge::Ok);
    assert_eq!(lb.charge(Dir::Down, 100), Charge::Exhausted);
    // A learns B's 400 at its next sync and is over too.
    b.sync_usage(&tb).await;
    a.sync_usage(&ta).await;
    assert!(ta.admit("u", ip).is_err(), "over quota on A as well");
    // Bytes relayed while the store is down are pushed when it is back.
    let (tc, td) = (table(), table());
    let store2 = Arc::new(Memory::default());
    let (c, d) = (node(&store2, "c"), node(&store2, "d"));
    c.baseline(&tc);
    d.baseline(&td);
    let lc = tc.admit("u", ip).expect("C");
    store2.broken.store(true, Relaxed);
    assert_eq!(lc.charge(Dir::Up, 700), Charge::Ok);
    c.sync_usage(&tc).await;
    assert!(!c.is_up());
    store2.broken.store(false, Relaxed);
    c.down_until.store(0, Relaxed);
    c.sync_usage(&tc).await;
    d.sync_usage(&td).await;
    let ld = td.admit("u", ip).expect("D");
    assert_eq!(
        ld.charge(Dir::Up, 300),
        Charge::Exhausted,
        "D counts C's outage bytes"
    );
    drop((la, lb, lc, ld));
}

#[tokio::test]
async fn max_ips_count_every_nodes_addresses() {
    use crate::config::user_limits::IpLimit;
    use crate::config::UserLimits;
    use crate::policy::users::{UserRefusal, UserTable};
    let store = Arc::new(Memory::default());
    let (a, b) = (node(&store, "a"), node(&store, "b"));
    let table = || {
        let t = UserTable::new(chrono_tz::UTC, crate::policy::clock::SystemClock::shared());
        let limits = UserLimits {
            max_ips: Some(IpLimit {
                max: 2,
                window: Duration::from_secs(3600),
            }),
            ..Default::default()
        };
        t.reconfigure(&[("u".to_owned(), limits)]);
        t
    };
    let (ta, tb) = (table(), table());
    let ip = |i: u8| std::net::IpAddr::from([192, 0, 2, i]);
    let l1 = ta.admit("u", ip(1)).expect("1st address, on A");
    let l2 = tb.admit("u", ip(2)).expect("2nd address, on B");
    a.sync(&ta).await;
    b.sync(&tb).await;
    a.sync(&ta).await;
    // A third address is refused on both; the two known ones pass on either.
    assert!(matches!(ta.admit("u", ip(3)), Err(UserRefusal::TooManyIps)));
    assert!(matches!(tb.admit("u", ip(3)), Err(UserRefusal::TooManyIps)));
    let again = ta.admit("u", ip(2)).expect("B's address is known on A");
    drop((l1, l2, again));
}

#[tokio::test]
async fn an_edit_the_store_missed_is_sent_when_it_is_back() {
    let store = Arc::new(Memory::default());
    let a = node(&store, "a");
    store.broken.store(true, Relaxed);
    assert!(!a.send("rules", b"[1]".to_vec()).await);
    assert_eq!(a.resend().await, vec!["rules"], "still unsent");
    store.broken.store(false, Relaxed);
    assert!(a.resend().await.is_empty());
    assert_eq!(store.fetch("rules").await.unwrap(), Some(b"[1]".to_vec()));
    // A newer edit replaces an older unsent one.
    store.broken.store(true, Relaxed);
    a.send("users", b"{\"a\":1}".to_vec()).await;
    a.send("users", b"{\"a\":2}".to_vec()).await;
    store.broken.store(false, Relaxed);
    a.resend().await;
    assert_eq!(
        store.fetch("users").await.unwrap(),
        Some(b"{\"a\":2}".to_vec())
    );
}
