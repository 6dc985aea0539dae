//! End-to-end tests of the proxy core (issue 3) over real sockets: scripted
//! clients of every mode → mtgate → the testkit's fake DC, IPv4 and IPv6,
//! media and unknown DC indexes, bulk relay, half-close, idle timeout, bad input.

mod common;

use common::*;
use mtgate_crypto::Key16;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

const USERS_ALL: &str = "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n[users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"classic\", \"dd\", \"ee\"]\n";

fn modes() -> Vec<ClientMode> {
    vec![
        ClientMode::Classic(ProtoTag::Abridged),
        ClientMode::Classic(ProtoTag::Intermediate),
        ClientMode::Secure,
        ClientMode::FakeTls {
            domain: "mask.test".into(),
        },
    ]
}

async fn dc(mode: FakeDcMode) -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), mode)
        .await
        .expect("fake dc")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_reaches_the_dc_and_back() {
    let dc = dc(FakeDcMode::Mtproto).await;
    let proxy = Proxy::start_with_dc(USERS_ALL, dc.local_addr()).await;
    for (i, mode) in modes().into_iter().enumerate() {
        let mut c = ObfsClient::connect(proxy.addr, &key(), mode.clone(), 2)
            .await
            .expect("connect");
        let res = c
            .req_pq_multi()
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e:#}"));
        // The second step of the key exchange round-trips as well.
        let dh = c.req_dh_params(&res).await.expect("dh");
        assert_eq!(dh.server_nonce, res.server_nonce, "{mode:?}");
        assert_eq!(dc.seen().len(), i + 1);
    }
    let tags: Vec<ProtoTag> = dc.seen().iter().map(|s| s.0).collect();
    // The proxy uses the client's tag toward the DC (FakeTLS carries padded inside).
    assert_eq!(
        tags,
        vec![
            ProtoTag::Abridged,
            ProtoTag::Intermediate,
            ProtoTag::Padded,
            ProtoTag::Padded
        ]
    );
    assert_eq!(proxy.counters.authenticated.load(Relaxed), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_cdn_and_unknown_dc_indexes() {
    let dc = dc(FakeDcMode::Mtproto).await;
    let proxy = Proxy::start_with_dc(USERS_ALL, dc.local_addr()).await;
    for idx in [-2i16, -4, 203, 0, 99, 10002] {
        let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, idx)
            .await
            .expect("connect");
        c.req_pq_multi()
            .await
            .unwrap_or_else(|e| panic!("dc {idx}: {e:#}"));
    }
    let seen: Vec<i16> = dc.seen().iter().map(|s| s.1).collect();
    // The signed index is passed on (media stays visible); unknown ones fall back to DC 2.
    assert_eq!(seen, vec![-2, -4, 203, 0, 99, 10002]);
    proxy.stop().await;

    // With `unknown_dc = "close"`, an unknown index gets nothing and is closed.
    let proxy = Proxy::start_with_dc(
        &format!("[upstream]\nunknown_dc = \"close\"\n{USERS_ALL}"),
        dc.local_addr(),
    )
    .await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 99)
        .await
        .expect("connect");
    c.send_raw(b"").await.ok();
    c.flush().await.ok();
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "unknown DC must be closed"
    );
    assert_eq!(dc.seen().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_and_dual_stack_clients() {
    let dc = dc(FakeDcMode::Mtproto).await;
    // Dual-stack: one [::]:0 listener serves IPv4 and IPv6 clients.
    let proxy = Proxy::start_full("[::]:0", "", USERS_ALL, &[dc.local_addr()]).await;
    let port = proxy.addr.port();
    for host in ["127.0.0.1", "[::1]"] {
        let addr: SocketAddr = format!("{host}:{port}").parse().unwrap();
        for mode in modes() {
            let mut c = ObfsClient::connect(addr, &key(), mode.clone(), 4)
                .await
                .expect("connect");
            c.req_pq_multi()
                .await
                .unwrap_or_else(|e| panic!("{host} {mode:?}: {e:#}"));
        }
    }
    assert_eq!(dc.seen().len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_prefers_ipv6_and_falls_back() {
    // A DC on IPv6 only; the table lists a dead IPv4 address first.
    let dc6 = FakeDc::start("[::1]:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("v6 dc");
    let dead_v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "",
        &format!("[upstream]\nprefer = \"ipv6\"\n{USERS_ALL}"),
        &[dead_v4, dc6.local_addr()],
    )
    .await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.req_pq_multi().await.expect("v6 preferred");
    assert_eq!(
        proxy.counters.upstream_failures.load(Relaxed),
        0,
        "IPv6 tried first"
    );
    proxy.stop().await;
    // Preferring IPv4: the dead v4 address fails, then IPv6 works.
    let proxy = Proxy::start_full("127.0.0.1:0", "", USERS_ALL, &[dead_v4, dc6.local_addr()]).await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.req_pq_multi().await.expect("fell back to v6");
    assert_eq!(proxy.counters.upstream_failures.load(Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_relay_is_byte_exact_in_every_mode() {
    let dc = dc(FakeDcMode::Echo).await;
    let proxy = Proxy::start_with_dc(USERS_ALL, dc.local_addr()).await;
    let data: Vec<u8> = (0..600_000u32).map(|i| (i * 31 + i / 977) as u8).collect();
    for mode in modes() {
        let mut c = ObfsClient::connect(proxy.addr, &key(), mode.clone(), 2)
            .await
            .expect("connect");
        let (mut sent, mut got) = (0, Vec::new());
        while sent < data.len() {
            let end = (sent + 70_000).min(data.len());
            c.send_raw(&data[sent..end]).await.expect("send");
            sent = end;
            got.extend(c.recv_exact(end - got.len()).await.expect("echo"));
        }
        assert!(got == data, "{mode:?}: echoed bytes differ");
        // Half-close: the FIN reaches the DC, whose close reaches the client.
        c.shutdown().await.expect("shutdown");
        assert!(
            c.closed_within(Duration::from_secs(3)).await,
            "{mode:?}: half-close not forwarded"
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(proxy.counters.bytes_up.load(Relaxed) >= 4 * data.len() as u64);
    assert!(proxy.counters.bytes_down.load(Relaxed) >= 4 * data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faketls_hello_sizes_and_segmentation() {
    let dc = dc(FakeDcMode::Mtproto).await;
    let proxy = Proxy::start_with_dc(USERS_ALL, dc.local_addr()).await;
    for (len, segments) in [(517, 1), (517, 5), (1800, 3), (4096, 1), (16_000, 7)] {
        let opts = ClientOptions {
            hello_len: Some(len),
            hello_segments: segments,
            segment_delay: Duration::from_millis(5),
            ..Default::default()
        };
        let mode = ClientMode::FakeTls {
            domain: "mask.test".into(),
        };
        let mut c = ObfsClient::connect_with(proxy.addr, &key(), mode, 2, opts)
            .await
            .unwrap_or_else(|e| panic!("{len}/{segments}: {e:#}"));
        c.req_pq_multi()
            .await
            .unwrap_or_else(|e| panic!("{len}/{segments}: {e:#}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_closed_silently_and_the_proxy_keeps_serving() {
    let dc = dc(FakeDcMode::Mtproto).await;
    let proxy = Proxy::start_with_dc(USERS_ALL, dc.local_addr()).await;
    let mut rnd = vec![0u8; 5000];
    mtgate_crypto::fill_random(&mut rnd);
    let wrong = Key16::new([9; 16]);
    let garbage: Vec<Vec<u8>> = vec![
        rnd[..64].to_vec(),
        rnd.clone(),
        vec![0x16, 3, 1, 0xff, 0xff],
        vec![0x16, 3, 1, 0, 1, 0],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        mtgate_proto::faketls::build_client_hello(&wrong, "mask.test", unix_now(), &[1; 64], 517),
    ];
    for g in &garbage {
        let seen = probe(
            proxy.addr,
            std::slice::from_ref(g),
            Duration::ZERO,
            false,
            Duration::from_secs(4),
        )
        .await;
        assert!(
            seen.bytes.is_empty(),
            "the proxy must never answer bad input: {:?}",
            seen.bytes
        );
        assert_ne!(seen.end, End::Open, "bad input must be closed");
    }
    // A wrong secret in every obfuscated2 mode, too.
    for mode in modes() {
        let r = ObfsClient::connect(proxy.addr, &wrong, mode.clone(), 2).await;
        if let Ok(mut c) = r {
            assert!(
                c.req_pq_multi().await.is_err(),
                "{mode:?}: wrong secret must not reach the DC"
            );
        }
    }
    assert_eq!(dc.seen().len(), 0);
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.req_pq_multi().await.expect("still serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() {
    let dc = dc(FakeDcMode::Echo).await;
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "idle_timeout = \"1s\"",
        USERS_ALL,
        &[dc.local_addr()],
    )
    .await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.send_raw(b"ping").await.expect("send");
    assert_eq!(c.recv_exact(4).await.expect("echo"), b"ping");
    let t = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(4)).await,
        "idle connection not closed"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        t.elapsed()
    );
}

/// A DC that takes the connection and never says a byte (black-holed
/// behind a middlebox): the client is closed at the connect timeout, not
/// left hanging until the idle timeout. A client that has not spoken is not
/// closed for the DC's silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_dc_is_given_up_at_the_connect_timeout() {
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = hole.local_addr().expect("addr");
    let _hole = tokio::spawn(async move {
        let mut kept = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            kept.push(s); // read nothing, answer nothing
        }
    });
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "idle_timeout = \"5m\"",
        &format!("{USERS_ALL}\n[upstream]\nconnect_timeout = \"1s\"\n"),
        &[addr],
    )
    .await;
    let mut quiet = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.send_raw(b"req_pq_multi, say").await.expect("send");
    let t = std::time::Instant::now();
    assert!(
        c.closed_within(Duration::from_secs(5)).await,
        "a client behind a silent DC was left hanging"
    );
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    assert!(
        !quiet.closed_within(Duration::from_millis(500)).await,
        "a client that has not spoken waits for nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_deadline_closes_silent_clients_without_fronting() {
    let proxy = Proxy::start_full(
        "127.0.0.1:0",
        "handshake_timeout = \"1s\"",
        USERS_ALL,
        &["127.0.0.1:1".parse().unwrap()],
    )
    .await;
    let seen = probe(
        proxy.addr,
        &[vec![0x16, 3, 1]],
        Duration::ZERO,
        false,
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(seen.end, End::Fin);
    assert!(seen.bytes.is_empty());
    assert!(
        seen.after >= Duration::from_millis(900) && seen.after < Duration::from_secs(3),
        "{:?}",
        seen.after
    );
}
