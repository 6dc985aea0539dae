//! Middle-end faults beyond what the oracle injects itself (those are in
//! `me_e2e.rs`): the middle-end process dies and comes back on the same port,
//! and the path to it is slow or stalls. Over real loopback sockets to the
//! fake ME oracle; every wait is bounded. See `me/mod.rs` for the venv.

mod me;

use me::*;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_restart_closes_clients_and_pool_reconnects() {
    if !available() {
        return;
    }
    let mut fake = FakeMe::start(1, &[]).await;
    let proxy = MeProxy::start(&fake, &[("connections_per_addr", "2")], dead_dc()).await;
    assert!(proxy.wait_ready(2).await, "both links ready");
    let me = proxy.runtime.me.clone().unwrap();
    assert!(
        me.stats().ready_by_dc.contains(&(-2, 2)),
        "{:?}",
        me.stats()
    );
    let mut clients = Vec::new();
    for dc in [2, -2, 2] {
        let mut c = classic(proxy.addr, dc).await;
        echo_once(&mut c, 200, T)
            .await
            .expect("echo before the crash");
        clients.push(c);
    }

    // The middle-end dies: every client of its links is closed, promptly.
    let killed = Instant::now();
    fake.kill().await;
    for (i, c) in clients.iter_mut().enumerate() {
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "client {i} of a dead middle-end closed"
        );
    }
    assert!(
        wait_until(Duration::from_secs(5), || proxy.ready() == 0).await,
        "dead links leave the pool"
    );
    assert!(me.stats().ready_by_dc.iter().all(|(_, n)| *n == 0));
    assert_eq!(me.stats().lost, 2, "{:?}", me.stats());
    // Every session of the lost links ended (nothing is left holding state).
    let k = proxy.counters.clone();
    assert!(
        wait_until(Duration::from_secs(5), || {
            k.closed.load(Relaxed) == k.opened.load(Relaxed)
        })
        .await,
        "sessions left open: opened {}, closed {}",
        k.opened.load(Relaxed),
        k.closed.load(Relaxed)
    );
    // While it is down a new client is refused (fallback off), not left hanging.
    let mut c = classic(proxy.addr, 2).await;
    let _ = c.send_frame(&echo_packet(64)).await;
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "client refused while no middle-end is up"
    );
    // Let the pool fail a few times against the closed port (back-off grows).
    tokio::time::sleep(Duration::from_millis(1500).saturating_sub(killed.elapsed())).await;

    // Back on the same port: the pool reconnects within its back-off ceiling
    // (1 s in these tests) plus the handshake, and new clients are served.
    let restarted = Instant::now();
    let before = fake.events("handshake_ok").len();
    fake.restart().await;
    assert!(
        proxy.wait_ready(2).await,
        "pool reconnected after the restart"
    );
    let took = restarted.elapsed();
    assert!(took < Duration::from_secs(5), "reconnect took {took:?}");
    // The oracle logs a handshake after answering it: a moment later, under load.
    assert!(
        wait_until(Duration::from_secs(5), || fake.events("handshake_ok").len()
            >= before + 2)
        .await,
        "the oracle logged both new handshakes"
    );
    for dc in [2, -2] {
        let mut c = classic(proxy.addr, dc).await;
        echo_once(&mut c, 4096, T)
            .await
            .expect("echo after the restart");
    }
    // The failed attempts while it was down were counted.
    let stats = me.stats();
    assert!(stats.connect_failures >= 2, "{stats:?}");
    drop(me);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_slow_answers_are_delivered_and_a_stall_is_retried() {
    if !available() {
        return;
    }
    // The path stalls first: nothing passes either way.
    let (fake, path) = SlowPath::start_with_oracle(Duration::from_millis(300), true).await;
    let conf = format!(
        "default 2;\nproxy_for 2 {a};\nproxy_for -2 {a};\n",
        a = path.addr
    );
    let proxy = MeProxy::start_with(&fake, &conf, &[], dead_dc(), "127.0.0.1").await;

    // The 2 s handshake timeout drops each stalled attempt and the pool tries again.
    assert!(
        wait_until(Duration::from_secs(8), || path
            .closed_by_proxy
            .load(Relaxed)
            >= 2)
        .await,
        "stalled attempts dropped: accepted {}, closed {}",
        path.accepted.load(Relaxed),
        path.closed_by_proxy.load(Relaxed)
    );
    assert_eq!(proxy.ready(), 0, "a stalled link is never ready");
    assert!(fake.events("handshake_ok").is_empty());
    let stats = proxy.runtime.me.as_ref().unwrap().stats();
    assert!(stats.handshake_failures >= 2, "{stats:?}");
    // A client meanwhile is refused within a bound, not held.
    let mut c = classic(proxy.addr, 2).await;
    let _ = c.send_frame(&echo_packet(64)).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);

    // The path un-stalls but stays slow: 300 ms on every chunk each way. The
    // four set-up messages (1.2 s) fit the 2 s handshake timeout.
    path.stall.store(false, Relaxed);
    assert!(proxy.wait_ready(1).await, "slow link comes up");
    let mut c = classic(proxy.addr, 2).await;
    for len in [64, 4096, 100_000] {
        let took = echo_once(&mut c, len, Duration::from_secs(10))
            .await
            .unwrap_or_else(|e| panic!("echo of {len} over a slow path: {e}"));
        assert!(took >= Duration::from_millis(600), "{took:?}: not delayed?");
    }
    // Slow but alive: nothing was torn down.
    assert_eq!(proxy.ready(), 1);
    let ok = fake.events("handshake_ok");
    assert_eq!(ok.len(), 1, "{ok:?}");
    let rpc = field(&ok[0], "rpc").unwrap();
    let closed = fake.events("rpc_closed");
    assert!(
        !closed.iter().any(|l| field(l, "rpc") == Some(rpc)),
        "the slow link {rpc} was closed: {closed:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_learned_public_ip_from_public_host() {
    if !available() {
        return;
    }
    // The middle-end sees us as 127.9.9.9 (NAT); no `nat_ip` is configured,
    // but `server.public_host` names that address and our local one is loopback.
    let fake = FakeMe::start(1, &["--key-client-ip", "127.9.9.9"]).await;
    let conf = fake.multi_conf();
    let learned = MeProxy::start_with(&fake, &conf, &[], dead_dc(), "127.9.9.9").await;
    let wrong = MeProxy::start_with(&fake, &conf, &[], dead_dc(), "127.8.8.8").await;
    assert!(
        learned.wait_ready(1).await,
        "handshake with the learned address"
    );
    let keys = fake.events("keys_derived");
    assert!(!keys.is_empty());
    let mut c = classic(learned.addr, 2).await;
    echo_once(&mut c, 256, T).await.expect("echo");
    // Requests announce the learned address too.
    let last = fake.events("proxy_req").pop().unwrap();
    assert_eq!(field(&last, "our_ip"), Some("127.9.9.9"), "{last}");

    // A wrong learned address fails the handshake visibly: counted, never
    // ready, and its clients are refused instead of hanging.
    let me = wrong.runtime.me.as_ref().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || me.stats().handshake_failures
            >= 2)
        .await,
        "{:?}",
        me.stats()
    );
    assert_eq!(wrong.ready(), 0);
    assert_eq!(me.stats().connect_failures, 0, "{:?}", me.stats());
    let mut c = classic(wrong.addr, 2).await;
    let _ = c.send_frame(&echo_packet(64)).await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert_eq!(learned.ready(), 1);
    learned.stop().await;
    wrong.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_file_min_connections_unless_configured() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &[]).await;
    let conf = format!(
        "min_connections 3; max_connections 8;\n{}",
        fake.multi_conf()
    );
    // No `connections_per_addr`: the file's min_connections (3) per address.
    let from_file = MeProxy::start_with(
        &fake,
        &conf,
        &[("connections_per_addr", "")],
        dead_dc(),
        "127.0.0.1",
    )
    .await;
    assert!(from_file.wait_ready(3).await, "3 links from the file");
    // Configured: the config wins (1).
    let configured = MeProxy::start_with(&fake, &conf, &[], dead_dc(), "127.0.0.1").await;
    assert!(configured.wait_ready(1).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(from_file.ready(), 3);
    assert_eq!(configured.ready(), 1);
    assert_eq!(fake.events("handshake_ok").len(), 4);
    // max_connections caps min_connections.
    let capped = format!(
        "min_connections 5; max_connections 2;\n{}",
        fake.multi_conf()
    );
    let capped = MeProxy::start_with(
        &fake,
        &capped,
        &[("connections_per_addr", "")],
        dead_dc(),
        "127.0.0.1",
    )
    .await;
    assert!(capped.wait_ready(2).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(capped.ready(), 2);
    from_file.stop().await;
    configured.stop().await;
    capped.stop().await;
}
