//! SOCKS5 upstreams (issue 14) over real loopback sockets: direct-mode DC
//! connections go through one SOCKS5 proxy, with and without a password,
//! and through a chain of two; a wrong password or a dead hop is a classified
//! upstream failure (metrics `class` label), never a hang.

mod common;

use common::{Proxy, KEY_HEX};
use mtgate::admin::{Metrics, MetricsSink};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use mtgate_testkit::socks5::Socks5Server;
use std::time::Duration;

async fn dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("fake dc")
}

/// mtgate with every DC at `dc`, reached through `socks5` (TOML list items).
async fn start(dc: &FakeDc, socks5: &[String]) -> Proxy {
    let list: Vec<String> = socks5.iter().map(|s| format!("\"{s}\"")).collect();
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream]\nconnect_timeout = \"2s\"\nsocks5 = [{}]\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        list.join(", ")
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_connections_go_through_one_socks5_proxy() {
    let dc = dc().await;
    for auth in [None, Some(("alice", "s3cret"))] {
        let socks = Socks5Server::start(auth).await.unwrap();
        let url = match auth {
            None => format!("socks5://{}", socks.addr()),
            Some((u, p)) => format!("socks5://{u}:{p}@{}", socks.addr()),
        };
        let proxy = start(&dc, &[url]).await;
        for _ in 0..3 {
            assert!(common::resolves(proxy.addr).await, "auth {auth:?}");
        }
        let st = socks.stats();
        assert_eq!(st.accepted, 3, "{st:?}");
        assert_eq!(st.auth_failures, 0);
        assert!(
            st.targets.iter().all(|t| *t == dc.local_addr().to_string()),
            "the proxy was asked for the DC: {st:?}"
        );
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_proxies_is_followed_in_order() {
    let dc = dc().await;
    let first = Socks5Server::start(Some(("u1", "p1"))).await.unwrap();
    let second = Socks5Server::start(None).await.unwrap();
    let proxy = start(
        &dc,
        &[
            format!("socks5://u1:p1@{}", first.addr()),
            format!("socks5://{}", second.addr()),
        ],
    )
    .await;
    assert!(common::resolves(proxy.addr).await);
    assert!(common::resolves(proxy.addr).await);
    assert_eq!(
        first.stats().targets,
        vec![second.addr().to_string(); 2],
        "the first hop is asked for the second"
    );
    assert_eq!(second.stats().targets, vec![dc.local_addr().to_string(); 2]);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_or_a_dead_hop_is_a_classified_failure() {
    let dc = dc().await;
    let socks = Socks5Server::start(Some(("alice", "right"))).await.unwrap();
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for (url, class) in [
        (format!("socks5://alice:wrong@{}", socks.addr()), "protocol"),
        (format!("socks5://{dead}"), "refused"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mtgate.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             [tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
             [upstream]\nconnect_timeout = \"2s\"\nsocks5 = [\"{url}\"]\n\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n{}",
            dir.path().display(),
            mtgate_testkit::conf::dcs_table(&[dc.local_addr()])
        );
        std::fs::write(&path, &text).unwrap();
        let cfg = mtgate::config::Config::load(&path, &Default::default()).unwrap();
        let metrics = std::sync::Arc::new(
            Metrics::new(cfg.users.iter().map(|u| u.name.as_str())).with_dc_table(&cfg.dcs),
        );
        let tel =
            mtgate::events::Telemetry::new(vec![std::sync::Arc::new(MetricsSink(metrics.clone()))]);
        let users = cfg.users.clone();
        let rt = std::sync::Arc::new(mtgate::runtime::Runtime::build(cfg, users, tel).unwrap());
        let server = mtgate::server::Server::start(rt).await.unwrap();
        let started = std::time::Instant::now();
        assert!(!common::resolves(server.local_addrs[0]).await);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a failed hop ends the attempt within the connect timeout"
        );
        let text = metrics.encode().unwrap();
        // Once in the first pass, once in the retry pass (`upstream.retries`).
        let line =
            format!("mtgate_upstream_connect_failures_total{{dc=\"2\",class=\"{class}\"}} 2");
        assert!(
            text.contains(&line),
            "{line} in:\n{}",
            text.lines()
                .filter(|l| l.contains("connect_failures"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        server.shutdown(Duration::from_millis(100)).await;
    }
    assert_eq!(dc.stats().res_pq, 0, "nothing reached the DC");
    assert!(socks.stats().auth_failures >= 1);
}
