//! Upstream balancing (issue 14) over real loopback sockets: three fake DCs
//! serve one DC number; each strategy's distribution, weights, and a target
//! killed and revived under a steady load (no client is lost: a failed
//! connect is retried on another target, the breaker takes the dead one out,
//! an active check brings it back).

mod common;

use common::{key, Proxy, KEY_HEX};
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::time::Duration;

async fn dcs(n: usize) -> Vec<FakeDc> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(
            FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
                .await
                .expect("fake dc"),
        );
    }
    v
}

async fn start(dcs: &[FakeDc], upstream: &str) -> Proxy {
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream]\nconnect_timeout = \"1s\"\n{upstream}\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n"
    );
    let addrs: Vec<SocketAddr> = dcs.iter().map(FakeDc::local_addr).collect();
    Proxy::start_full("127.0.0.1:0", "", &toml, &addrs).await
}

/// A dd client from `from` (None: 127.0.0.1) that got the DC's resPQ.
async fn client(proxy: SocketAddr, from: Option<&str>) -> Option<ObfsClient> {
    let opts = ClientOptions {
        bind: from.map(|f| f.parse().unwrap()),
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let mut c = ObfsClient::connect_with(proxy, &key(), ClientMode::Secure, 2, opts)
        .await
        .ok()?;
    match tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await {
        Ok(Ok(_)) => Some(c),
        _ => None,
    }
}

fn served(dcs: &[FakeDc]) -> Vec<u64> {
    dcs.iter().map(|d| d.stats().res_pq).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_and_by_weight() {
    let dcs = dcs(3).await;
    let proxy = start(&dcs, "balance = \"round_robin\"").await;
    for _ in 0..30 {
        assert!(client(proxy.addr, None).await.is_some());
    }
    assert_eq!(served(&dcs), vec![10, 10, 10]);
    proxy.stop().await;

    let dcs = self::dcs(3).await;
    let w = format!(
        "balance = \"round_robin\"\nweights = {{ \"{}\" = 2 }}",
        dcs[2].local_addr()
    );
    let proxy = start(&dcs, &w).await;
    for _ in 0..40 {
        assert!(client(proxy.addr, None).await.is_some());
    }
    assert_eq!(served(&dcs), vec![10, 10, 20]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_sends_everything_to_the_first() {
    let dcs = dcs(3).await;
    let proxy = start(&dcs, "").await;
    for _ in 0..9 {
        assert!(client(proxy.addr, None).await.is_some());
    }
    assert_eq!(served(&dcs), vec![9, 0, 0]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hash_keeps_each_source_on_one_target() {
    let dcs = dcs(3).await;
    let proxy = start(&dcs, "balance = \"client_hash\"").await;
    let sources: Vec<String> = (10..40).map(|i| format!("127.0.9.{i}")).collect();
    for s in &sources {
        let before = served(&dcs);
        for _ in 0..3 {
            assert!(client(proxy.addr, Some(s)).await.is_some());
        }
        let after = served(&dcs);
        let moved: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        assert!(
            moved.contains(&3),
            "{s}: all three on one target, got {moved:?}"
        );
    }
    let total = served(&dcs);
    assert!(
        total.iter().filter(|n| **n > 0).count() >= 2,
        "30 sources spread over the targets: {total:?}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_fills_the_emptiest_target() {
    let dcs = dcs(3).await;
    let proxy = start(&dcs, "balance = \"least_connections\"").await;
    // Nine connections held open: three on each target.
    let mut held = Vec::new();
    for _ in 0..9 {
        held.push(client(proxy.addr, None).await.expect("client"));
    }
    assert_eq!(served(&dcs), vec![3, 3, 3]);
    // Close them all: new connections spread one each again.
    drop(held);
    // Until the nine sessions have ended on the server (their leases go).
    let closed = || {
        proxy
            .counters
            .closed
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    for _ in 0..300 {
        if closed() >= 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed() >= 9, "the held sessions ended");
    let mut again = Vec::new();
    for _ in 0..3 {
        again.push(client(proxy.addr, None).await.expect("client"));
    }
    assert_eq!(served(&dcs), vec![4, 4, 4]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_killed_and_revived_under_load_loses_no_client() {
    let mut dcs = dcs(3).await;
    let proxy = start(
        &dcs,
        "balance = \"round_robin\"\n[upstream.health]\nfailures = 2\ncooldown = \"30s\"\ncheck_interval = \"200ms\"",
    )
    .await;
    for _ in 0..6 {
        assert!(client(proxy.addr, None).await.is_some());
    }
    // Kill the second target: its port is closed from now on.
    let dead = dcs[1].local_addr();
    drop(dcs.remove(1));
    let mut failed = 0;
    for _ in 0..30 {
        if client(proxy.addr, None).await.is_none() {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "a failed connect is retried on another target");
    let failures = proxy
        .counters
        .upstream_failures
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        failures, 2,
        "two failures open the breaker; no attempt after"
    );
    assert_eq!(proxy.runtime.balancer.ejected(), vec![dead.into()]);

    // Revive it on the same port: the active check brings it back.
    let revived = FakeDc::start(dead, FakeDcMode::Mtproto)
        .await
        .expect("revive");
    let back = async {
        while !proxy.runtime.balancer.ejected().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), back)
        .await
        .expect("restored by an active check within seconds");
    for _ in 0..9 {
        assert!(client(proxy.addr, None).await.is_some());
    }
    assert!(
        revived.stats().res_pq >= 3,
        "the revived target takes its share again: {:?}",
        revived.stats()
    );
    proxy.stop().await;
}

/// A target that never answers a SYN: a listener whose one-slot accept
/// queue is full (loopback's way to black-hole).
fn black_hole() -> (socket2::Socket, std::net::TcpStream) {
    let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    l.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    l.listen(0).unwrap();
    let addr = l.local_addr().unwrap().as_socket().unwrap();
    let filler = std::net::TcpStream::connect(addr).unwrap();
    (l, filler)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn happy_eyeballs_serves_past_a_black_holed_target_and_takes_it_out() {
    let (hole, _filler) = black_hole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let good = dcs(1).await;
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream]\nconnect_timeout = \"5s\"\n[upstream.health]\nfailures = 3\ncheck_interval = \"0s\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n"
    );
    // Failover order: the black hole first.
    let proxy =
        Proxy::start_full("127.0.0.1:0", "", &toml, &[hole_addr, good[0].local_addr()]).await;
    for i in 0..5 {
        let t = std::time::Instant::now();
        assert!(client(proxy.addr, None).await.is_some(), "client {i}");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "client {i} waited {:?}, not the 5 s connect timeout",
            t.elapsed()
        );
    }
    assert_eq!(served(&good), vec![5]);
    // Three times silent while the other answered: taken out.
    assert_eq!(proxy.runtime.balancer.ejected(), vec![hole_addr.into()]);
    proxy.stop().await;
}
