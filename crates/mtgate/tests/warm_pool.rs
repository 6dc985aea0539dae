//! Warm upstream connections (issue 14, `[upstream.pool]`) over real
//! loopback sockets: clients are served on connections opened ahead, and a
//! pooled connection the DC has closed (its own idle timeout) is never handed
//! to a client.

mod common;

use common::{Proxy, KEY_HEX};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcConfig};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// A fake DC that closes a connection that sent no header within `idle`.
async fn dc(idle: Duration) -> FakeDc {
    FakeDc::start_with(
        "127.0.0.1:0".parse().unwrap(),
        FakeDcConfig {
            header_timeout: idle,
            ..FakeDcConfig::default()
        },
    )
    .await
    .expect("fake dc")
}

async fn start(dc: &FakeDc, pool: &str) -> Proxy {
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream.pool]\n{pool}\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n"
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await
}

async fn wait_for(mut f: impl FnMut() -> bool) -> bool {
    for _ in 0..300 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_served_on_connections_opened_ahead() {
    let dc = dc(Duration::from_secs(30)).await;
    let proxy = start(&dc, "size = 2\nmax_idle = \"20s\"").await;
    let target = dc.local_addr();
    assert!(
        wait_for(|| proxy.runtime.warm.ready(target) == 2).await,
        "the pool fills"
    );
    assert_eq!(dc.stats().accepted, 2, "opened ahead, before any client");
    for _ in 0..4 {
        assert!(common::resolves(proxy.addr).await);
    }
    let used = proxy.runtime.warm.stats.used.load(Relaxed);
    assert!(used >= 2, "clients took warm connections: {used}");
    // The pool refills what clients took.
    assert!(wait_for(|| proxy.runtime.warm.ready(target) == 2).await);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_dc_closed_is_never_handed_out() {
    // The DC drops a silent connection after 300 ms; the pool is (wrongly)
    // told connections last 10 s, so it holds dead ones between refills.
    let dc = dc(Duration::from_millis(300)).await;
    let proxy = start(&dc, "size = 4\nmax_idle = \"10s\"").await;
    let target = dc.local_addr();
    assert!(wait_for(|| proxy.runtime.warm.ready(target) == 4).await);
    // Past the DC's timeout: every pooled connection is dead now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut failed = 0;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        if !common::resolves(proxy.addr).await {
            failed += 1;
        }
    }
    assert_eq!(failed, 0, "no client got a dead connection");
    let s = &proxy.runtime.warm.stats;
    assert!(
        s.stale.load(Relaxed) + s.expired.load(Relaxed) >= 1,
        "dead connections were found and dropped: stale {}, expired {}",
        s.stale.load(Relaxed),
        s.expired.load(Relaxed)
    );
    proxy.stop().await;
}
