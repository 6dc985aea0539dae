//! The WebSocket upstream (issue 14) over real loopback sockets: with
//! `[upstream.websocket]`, mtgate reaches a DC through a `wss://…/apiws`
//! endpoint (a local TLS WebSocket server with its own certificate, in front
//! of the fake DC) instead of the DC's TCP address, which is dead here.

mod common;

use common::wss::wss_dc;
use common::{key, Proxy, KEY_HEX};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_connections_go_through_the_websocket_endpoint() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test", "venus-1.test"], dc.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &wss.pem).unwrap();
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream.websocket]\nenabled = true\nhosts = {{ \"2\" = \"venus.test\" }}\n\
         resolve = {{ \"venus.test\" = \"{a}\", \"venus-1.test\" = \"{a}\" }}\nca_file = \"{}\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        ca.display(),
        a = wss.addr
    );
    // Every DC's TCP address is dead: only the WebSocket way works.
    let proxy =
        Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await;
    for dc_index in [2i16, -2] {
        let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, dc_index)
            .await
            .expect("connect");
        tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi())
            .await
            .expect("in time")
            .expect("resPQ through the WebSocket upstream");
    }
    assert_eq!(dc.stats().res_pq, 2);
    let seen = wss.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        ("venus.test".into(), "/apiws".into(), "binary".into())
    );
    assert_eq!(seen[1].0, "venus-1.test", "media DCs use the -1 name");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test"], dc.local_addr()).await;
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream.websocket]\nenabled = true\nhosts = {{ \"2\" = \"venus.test\" }}\n\
         resolve = {{ \"venus.test\" = \"{}\" }}\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        wss.addr
    );
    let proxy =
        Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    let r = tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "no DC answer without a trusted certificate"
    );
    assert_eq!(dc.stats().res_pq, 0);
    assert!(
        wss.seen.lock().unwrap().is_empty(),
        "no upgrade past a failed TLS"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fallback_mode_the_endpoint_serves_only_when_tcp_fails() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test"], dc.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &wss.pem).unwrap();
    let toml = || {
        format!(
            "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
             [upstream.websocket]\nenabled = true\nmode = \"fallback\"\nhosts = {{ \"2\" = \"venus.test\" }}\n\
             resolve = {{ \"venus.test\" = \"{}\" }}\nca_file = \"{}\"\n\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
            wss.addr,
            ca.display()
        )
    };
    let resp = |addr| async move {
        let mut c = ObfsClient::connect(addr, &key(), ClientMode::Secure, 2)
            .await
            .expect("connect");
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await,
            Ok(Ok(_))
        )
    };
    // TCP to the DC works: the endpoint is not used.
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml(), &[dc.local_addr()]).await;
    assert!(resp(proxy.addr).await);
    assert!(wss.seen.lock().unwrap().is_empty());
    proxy.stop().await;
    // TCP is dead: the endpoint serves.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml(), &[dead]).await;
    assert!(resp(proxy.addr).await);
    assert_eq!(wss.seen.lock().unwrap().len(), 1);
    proxy.stop().await;
}
