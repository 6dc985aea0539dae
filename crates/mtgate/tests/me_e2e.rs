//! Middle-proxy (ME) mode end to end, against the fake middle-end oracle of
//! `shared/oracles/fake_me/` (verified against the official MTProxy): its own
//! client scenarios, FakeTLS and per-user ad tags through mtgate's scripted
//! client, CRC32C both ways, pings both ways, the NAT key address, every
//! fault the oracle can inject, link loss, and the fallback to direct mode.
//! Every wait is bounded. See `me/mod.rs` for the Python venv these need.

mod me;

use me::*;
use mtgate_testkit::{ClientMode, FakeDc, FakeDcMode, ObfsClient};
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

/// rpc id → listen address, from the oracle's `handshake_ok` events.
fn rpc_listen(fake: &FakeMe) -> HashMap<String, String> {
    fake.events("handshake_ok")
        .iter()
        .filter_map(|l| Some((field(l, "rpc")?.to_owned(), field(l, "listen")?.to_owned())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_default_oracle_scenarios_ad_tag_multiplexing_routing() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(2, &[]).await;
    let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(proxy.wait_ready(2).await, "both ME addresses ready");

    let (ok, out) = fake_client(
        proxy.addr,
        &[
            "--transports",
            "intermediate",
            "padded",
            "abridged",
            "--scenario",
            "all",
        ],
        T,
    )
    .await;
    assert!(ok, "fake_client scenarios failed:\n{out}");
    let (ok, out) = fake_client(
        proxy.addr,
        &["--scenario", "big-answer", "--sizes", "1048576", "16777216"],
        T,
    )
    .await;
    assert!(ok, "big answer failed:\n{out}");

    // CRC32C was offered and taken on every link.
    let hs = fake.events("handshake_sent");
    assert!(
        hs.len() >= 2 && hs.iter().all(|l| field(l, "crc") == Some("crc32c")),
        "{hs:?}"
    );
    // The ad tag, MAGIC and EXTMODE2 on every request; a transport flag on each.
    let reqs = fake.events("proxy_req");
    assert!(reqs.len() >= 20, "{} requests", reqs.len());
    for r in &reqs {
        assert_eq!(field(r, "ad_tag"), Some(AD_TAG), "{r}");
        assert_eq!(field(r, "extra_len"), Some("24"), "{r}");
        assert!(r.contains("\"MAGIC\"") && r.contains("\"EXTMODE2\""), "{r}");
        assert!(r.contains("\"MEDIUM\"") || r.contains("\"COMPACT\""), "{r}");
        assert!(!r.contains("\"PAD\""), "official style: no PAD flag: {r}");
        assert_eq!(field(r, "our_ip"), Some("127.0.0.1"), "{r}");
        assert_eq!(
            field(r, "our_port"),
            Some(proxy.addr.port().to_string().as_str()),
            "{r}"
        );
    }
    assert!(reqs.iter().any(|r| r.contains("\"QUICKACK\"")));
    assert!(reqs.iter().any(|r| r.contains("\"NOT_ENCRYPTED\"")));
    // Clients that left were reported; CLOSE_EXT closed one (checked by fake_client).
    assert!(fake.wait_events("close_conn_recv", 5, T).await);
    assert!(!fake.events("close_ext_sent").is_empty());
    // Multiplexing: one link per address, many distinct conn ids.
    let ids: BTreeSet<&str> = reqs.iter().filter_map(|r| field(r, "conn_id")).collect();
    let rpcs: BTreeSet<&str> = reqs.iter().filter_map(|r| field(r, "rpc")).collect();
    assert!(
        ids.len() >= 8 && rpcs.len() <= 2,
        "{} ids on {} links",
        ids.len(),
        rpcs.len()
    );

    // DC routing: ±1 to the first address, 99 to `default 2` (the second).
    let listen = rpc_listen(&fake);
    for (dc, want) in [
        ("1", fake.listen[0]),
        ("-1", fake.listen[0]),
        ("99", fake.listen[1]),
    ] {
        let (ok, out) = fake_client(proxy.addr, &["--dc", dc, "--scenario", "reqpq"], T).await;
        assert!(ok, "dc {dc}:\n{out}");
        let last = fake.events("proxy_req").pop().unwrap();
        let rpc = field(&last, "rpc").unwrap();
        assert_eq!(
            listen.get(rpc).map(String::as_str),
            Some(want.to_string().as_str()),
            "dc {dc}"
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_faketls_client_and_per_user_ad_tag() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &[]).await;
    let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(proxy.wait_ready(1).await);

    // FakeTLS (padded intermediate inside records): handshake message and a
    // 100 KB answer that spans many TLS records.
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.into(),
    };
    let mut c = tokio::time::timeout(T, ObfsClient::connect(proxy.addr, &key(KEY_HEX), mode, 2))
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, c.req_pq_multi())
        .await
        .unwrap()
        .unwrap();
    let p = echo_packet(100_000);
    c.send_frame(&p).await.unwrap();
    let got = tokio::time::timeout(T, c.recv_frame())
        .await
        .unwrap()
        .unwrap();
    // Whole words of the client's random padding travel with the packet (PROTOCOL §4.3).
    assert!(
        got.starts_with(&p) && got.len() - p.len() <= 12,
        "{} vs {}",
        got.len(),
        p.len()
    );
    let reqs = fake.events("proxy_req");
    assert!(reqs.iter().all(|r| field(r, "ad_tag") == Some(AD_TAG)));

    // Bob has his own tag.
    let mut b = classic_as(proxy.addr, BOB_KEY_HEX, 2).await;
    tokio::time::timeout(T, b.req_pq_multi())
        .await
        .unwrap()
        .unwrap();
    let last = fake.events("proxy_req").pop().unwrap();
    assert_eq!(field(&last, "ad_tag"), Some(BOB_AD_TAG), "{last}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_crc32c_declined_and_not_offered() {
    if !available() {
        return;
    }
    let declining = FakeMe::start(1, &["--no-crc32c"]).await;
    let offered = MeProxy::start(&declining, &[], dead_dc()).await;
    let plain = FakeMe::start(1, &[]).await;
    let not_offered = MeProxy::start(&plain, &[("crc32c", "false")], dead_dc()).await;
    assert!(offered.wait_ready(1).await && not_offered.wait_ready(1).await);
    for (fake, proxy) in [(&declining, &offered), (&plain, &not_offered)] {
        let hs = fake.events("handshake_sent");
        assert!(
            hs.iter().all(|l| field(l, "crc") == Some("crc32")),
            "{hs:?}"
        );
        let (ok, out) = fake_client(
            proxy.addr,
            &[
                "--scenario",
                "reqpq",
                "echo",
                "quickack",
                "--sizes",
                "56",
                "70000",
            ],
            T,
        )
        .await;
        assert!(ok, "{out}");
    }
    offered.stop().await;
    not_offered.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_pings_both_ways() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &["--ping-interval", "0.2"]).await;
    let proxy = MeProxy::start(&fake, &[("ping_interval", "\"200ms\"")], dead_dc()).await;
    assert!(proxy.wait_ready(1).await);
    // The ME's pings are answered; ours are answered by the ME.
    assert!(fake.wait_events("pong_recv", 3, T).await, "our PONGs");
    assert!(
        fake.wait_events("ping_recv_pong_sent", 3, T).await,
        "our PINGs"
    );
    let ans = fake.control(r#"{"cmd":"ping","ping_id":4242}"#).await;
    assert!(ans.contains("\"sent\": 1"), "{ans}");
    let deadline = tokio::time::Instant::now() + T;
    while !fake
        .events("pong_recv")
        .iter()
        .any(|l| field(l, "ping_id") == Some("4242"))
    {
        assert!(tokio::time::Instant::now() < deadline, "PONG 4242");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut c = classic_as(proxy.addr, KEY_HEX, 2).await;
    tokio::time::timeout(T, c.req_pq_multi())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(proxy.ready(), 1, "pings kept the link");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_nat_address_in_keys_and_requests() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &["--key-client-ip", "127.9.9.9"]).await;
    let natted = MeProxy::start(&fake, &[("nat_ip", "\"127.9.9.9\"")], dead_dc()).await;
    let plain = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(natted.wait_ready(1).await, "handshake with the NAT address");
    let (ok, out) = fake_client(natted.addr, &["--scenario", "reqpq"], T).await;
    assert!(ok, "{out}");
    let last = fake.events("proxy_req").pop().unwrap();
    assert_eq!(field(&last, "our_ip"), Some("127.9.9.9"), "{last}");
    // Without it the keys differ: never ready, and the client is closed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(plain.ready(), 0);
    let mut c = classic_as(plain.addr, KEY_HEX, 2).await;
    c.send_frame(&echo_packet(64)).await.unwrap();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    natted.stop().await;
    plain.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_faults_never_ready_with_back_off() {
    if !available() {
        return;
    }
    let faults = [
        "wrong-secret",
        "stale-ts",
        "bad-peer-pid",
        "bad-crc",
        "bad-seq",
        "handshake-flags",
    ];
    let runs = faults.into_iter().map(|f| async move {
        let fake = FakeMe::start(1, &["--fault", f]).await;
        let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
        let start = tokio::time::Instant::now();
        // A client is refused (fallback off) instead of hanging.
        let mut c = classic_as(proxy.addr, KEY_HEX, 2).await;
        c.send_frame(&echo_packet(64)).await.unwrap();
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{f}: client not closed"
        );
        tokio::time::sleep(Duration::from_secs(2).saturating_sub(start.elapsed())).await;
        assert_eq!(proxy.ready(), 0, "{f}: a faulty ME must never be ready");
        // Back-off (100 ms doubling to 1 s): a handful of attempts in 2 s, not hundreds.
        let attempts = fake.events("rpc_accept").len();
        assert!(
            (1..=10).contains(&attempts),
            "{f}: {attempts} attempts in 2 s"
        );
        assert!(fake.events("proxy_req").is_empty(), "{f}");
        proxy.stop().await;
    });
    futures_join(runs).await;
}

/// Runs the futures concurrently (no extra dependency).
async fn futures_join<F: std::future::Future<Output = ()> + Send + 'static>(
    futs: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futs.map(tokio::spawn).collect();
    for h in handles {
        if let Err(e) = h.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_link_loss_closes_clients_and_recovers() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &[]).await;
    let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(proxy.wait_ready(1).await);
    let mut c = classic_as(proxy.addr, KEY_HEX, 2).await;
    tokio::time::timeout(T, c.req_pq_multi())
        .await
        .unwrap()
        .unwrap();

    // An answer for an unknown conn id is refused with CLOSE_CONN.
    fake.control(r#"{"cmd":"send_ans","conn_id":777}"#).await;
    let deadline = tokio::time::Instant::now() + T;
    while !fake
        .events("close_conn_recv")
        .iter()
        .any(|l| field(l, "conn_id") == Some("777"))
    {
        assert!(tokio::time::Instant::now() < deadline, "CLOSE_CONN 777");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The ME drops the link: its client is closed, the proxy reconnects.
    fake.control(r#"{"cmd":"drop_rpc"}"#).await;
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "client of a lost link closed"
    );
    assert!(
        fake.wait_events("handshake_ok", 2, Duration::from_secs(10))
            .await,
        "reconnected"
    );
    assert!(proxy.wait_ready(1).await);
    let mut c2 = classic_as(proxy.addr, KEY_HEX, -2).await;
    tokio::time::timeout(T, c2.req_pq_multi())
        .await
        .unwrap()
        .unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_unreachable_falls_back_to_direct_or_closes() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &["--fault", "wrong-secret"]).await;
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let fallback = MeProxy::start(&fake, &[("fallback_direct", "true")], dc.local_addr()).await;
    let strict = MeProxy::start(&fake, &[], dc.local_addr()).await;

    let mut c = classic_as(fallback.addr, KEY_HEX, 2).await;
    tokio::time::timeout(T, c.req_pq_multi())
        .await
        .unwrap()
        .unwrap();
    assert!(dc.wait_seen(1, T).await, "served by the DC directly");

    let mut s = classic_as(strict.addr, KEY_HEX, 2).await;
    s.send_frame(&echo_packet(64)).await.unwrap();
    assert!(s.closed_within(Duration::from_secs(5)).await);
    assert_eq!(dc.stats().accepted, 1, "the strict proxy never went direct");
    fallback.stop().await;
    strict.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_ipv6_middle_end() {
    if !available() {
        return;
    }
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("SKIP: no IPv6 loopback");
        return;
    }
    // The IPv6 key layout (PROTOCOL §7.5) against the oracle's, from the v6 file.
    let at = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, free_port_at("[::1]:0")));
    let fake = FakeMe::start_at(vec![at], &[]).await;
    let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(proxy.wait_ready(1).await, "IPv6 handshake");
    let (ok, out) = fake_client(
        proxy.addr,
        &["--scenario", "reqpq", "echo", "--sizes", "56", "4096"],
        T,
    )
    .await;
    assert!(ok, "{out}");
    let keys = fake.events("keys_derived").pop().unwrap();
    assert!(
        keys.contains("\"client_ipv6\": \"00000000000000000000000000000001\""),
        "{keys}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_files_are_reread_and_applied() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(2, &[]).await;
    let proxy = MeProxy::start(&fake, &[("reload_interval", "\"200ms\"")], dead_dc()).await;
    assert!(proxy.wait_ready(2).await);
    // A broken download changes nothing (the last good copy stays in force).
    std::fs::write(&proxy.conf, "garbage").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(proxy.ready(), 2);
    // The second address leaves the file: its link closes, DC 2 moves to the first.
    let a = fake.listen[0];
    std::fs::write(
        &proxy.conf,
        format!("default 2;\nproxy_for 1 {a};\nproxy_for 2 {a};\n"),
    )
    .unwrap();
    assert!(
        fake.wait_events("rpc_closed", 1, T).await,
        "retired link closed"
    );
    assert_eq!(proxy.ready(), 1);
    let (ok, out) = fake_client(proxy.addr, &["--dc", "2", "--scenario", "reqpq"], T).await;
    assert!(ok, "{out}");
    let last = fake.events("proxy_req").pop().unwrap();
    let listen = rpc_listen(&fake);
    assert_eq!(
        listen.get(field(&last, "rpc").unwrap()),
        Some(&a.to_string())
    );
    proxy.stop().await;
}

/// Behind a trusted front end (PROXY protocol), the middle-end is told the
/// client the front end named, not the front end's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_requests_carry_the_client_a_front_end_named() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &[]).await;
    let proxy = MeProxy::start_full(
        &fake,
        &fake.multi_conf(),
        &[],
        dead_dc(),
        "127.0.0.1",
        "[proxy_protocol]\ntrusted = [\"127.0.0.2\"]\n",
    )
    .await;
    assert!(proxy.wait_ready(1).await);
    let client: SocketAddr = "198.51.100.9:40123".parse().unwrap();
    let opts = mtgate_testkit::ClientOptions {
        bind: Some("127.0.0.2".parse().unwrap()),
        preamble: mtgate::net::proxy_protocol::v2_header(client, proxy.addr),
        ..Default::default()
    };
    let mut c = tokio::time::timeout(
        T,
        ObfsClient::connect_with(
            proxy.addr,
            &key(KEY_HEX),
            ClientMode::Classic(mtgate_proto::obfs2::ProtoTag::Intermediate),
            2,
            opts,
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect");
    echo_once(&mut c, 64, Duration::from_secs(5))
        .await
        .expect("echo through the ME");
    let reqs = fake.events("proxy_req");
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(field(r, "remote_ip"), Some("198.51.100.9"), "{r}");
        assert_eq!(field(r, "remote_port"), Some("40123"), "{r}");
    }
    proxy.stop().await;
}
