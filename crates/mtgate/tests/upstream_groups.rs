//! One DC group of mixed target kinds (issue 14) over real loopback sockets:
//! a plain address, an address through a SOCKS5 chain with a password, and
//! the DC's `wss://` WebSocket endpoint, each in front of a fake DC of its
//! own, balanced as one group by weighted round-robin. Then the chain's proxy
//! dies under a steady load: no client is lost (a failed connect is retried
//! on another target), the breaker takes out exactly that target, and it
//! comes back (active check or trial) when a proxy answers there again.

mod common;

use common::wss::wss_dc;
use common::{key, Proxy, KEY_HEX};
use mtgate::net::target::Target;
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use mtgate_testkit::socks5::Socks5Server;
use std::time::Duration;

async fn dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("fake dc")
}

/// A dd client that got its DC's resPQ through the proxy.
async fn served(proxy: std::net::SocketAddr, dc: i16) -> bool {
    let opts = ClientOptions {
        io_timeout: Duration::from_secs(5),
        ..Default::default()
    };
    let Ok(mut c) = ObfsClient::connect_with(proxy, &key(), ClientMode::Secure, dc, opts).await
    else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await,
        Ok(Ok(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_an_address_a_socks5_chain_and_a_websocket_endpoint() {
    let (plain, chained, web) = (dc().await, dc().await, dc().await);
    let wss = wss_dc(&["venus.test", "venus-1.test"], web.local_addr()).await;
    let socks = Socks5Server::start(Some(("eu-user", "eu-pass")))
        .await
        .unwrap();
    let socks_addr = socks.addr();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &wss.pem).unwrap();
    let dead = "127.0.0.1:1";
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream]\nbalance = \"round_robin\"\nconnect_timeout = \"2s\"\n\
         [upstream.health]\nfailures = 2\ncooldown = \"300ms\"\ncheck_interval = \"200ms\"\n\
         [upstream.chains]\neu = [\"socks5://eu-user:eu-pass@{socks_addr}\"]\n\
         [upstream.websocket]\nenabled = true\nhosts = {{ \"2\" = \"venus.test\" }}\n\
         resolve = {{ \"venus.test\" = \"{w}\", \"venus-1.test\" = \"{w}\" }}\nca_file = \"{ca}\"\n\
         [dcs]\n1 = [\"{dead}\"]\n3 = [\"{dead}\"]\n4 = [\"{dead}\"]\n5 = [\"{dead}\"]\n203 = [\"{dead}\"]\n\
         2 = [\"{p}\", {{ addr = \"{c}\", via = \"eu\", weight = 2 }}, \"websocket\"]\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        w = wss.addr,
        ca = ca.display(),
        p = plain.local_addr(),
        c = chained.local_addr(),
    );
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[]).await;

    // Weights 1 : 2 : 1 over the three kinds, DC 2 and its media DC -2.
    for i in 0..40 {
        assert!(served(proxy.addr, if i % 2 == 0 { 2 } else { -2 }).await);
    }
    let counts = [&plain, &chained, &web].map(|d| d.stats().res_pq);
    assert_eq!(counts, [10, 20, 10]);
    let s = socks.stats();
    assert_eq!(s.targets.len(), 20, "{s:?}");
    assert!(s
        .targets
        .iter()
        .all(|t| *t == chained.local_addr().to_string()));
    let seen = wss.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 10);
    assert!(seen.iter().any(|(host, _, _)| host == "venus-1.test"));

    // The chain's proxy dies: every client is still served, by the others.
    drop(socks);
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..20 {
        assert!(served(proxy.addr, 2).await, "a client was lost");
    }
    let via = Target::Via {
        addr: chained.local_addr(),
        chain: "eu".into(),
    };
    assert_eq!(proxy.runtime.balancer.ejected(), vec![via.clone()]);
    assert_eq!(chained.stats().res_pq, 20, "nothing reached it");

    // A proxy answers at the chain's address again: the target comes back
    // and its clients go through the new proxy.
    let back = Socks5Server::start_at(socks_addr, Some(("eu-user", "eu-pass")))
        .await
        .unwrap();
    // Back in service: by the active check through the chain, or by a
    // trial once the cooldown ran out (which of the two comes first depends
    // on the machine's timing, so the test waits for either).
    for _ in 0..50 {
        if proxy.runtime.balancer.ejected().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.runtime.balancer.ejected().is_empty(), "restored");
    for _ in 0..8 {
        assert!(served(proxy.addr, 2).await);
    }
    assert!(
        !back.stats().targets.is_empty(),
        "checked through the chain"
    );
    assert!(chained.stats().res_pq > 20, "in service again");
    proxy.stop().await;
}

/// A DC whose only target refuses at first and comes up a moment later: with
/// the default retry pass (after a back-off) the client is served; with
/// `retries = 0` the same client is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_pass_after_a_back_off_catches_a_target_coming_back() {
    for (retries, want) in [("", true), ("retries = 0\n", false)] {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let toml = format!(
            "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
             [upstream]\nconnect_timeout = \"3s\"\nretry_backoff = \"400ms\"\n{retries}\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n"
        );
        let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[addr]).await;
        let client = tokio::spawn(served(proxy.addr, 2));
        // The first pass is refused; the DC is up before the back-off ends.
        let failures = || {
            proxy
                .counters
                .upstream_failures
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        for _ in 0..300 {
            if failures() > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(failures(), 1, "the first pass was refused");
        let dc = FakeDc::start(addr, FakeDcMode::Mtproto).await.expect("dc");
        assert_eq!(client.await.unwrap(), want, "retries: {retries:?}");
        assert_eq!(dc.stats().res_pq, u64::from(want));
        proxy.stop().await;
    }
}
