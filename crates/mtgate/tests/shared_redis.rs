//! Nodes sharing their replay window through a real Redis (issue 16, first
//! step): a FakeTLS hello or an obfuscated2 header served by node A and
//! replayed to node B is fronted by B to the mask site like any stranger's;
//! with Redis killed mid-test both nodes keep serving every client on their
//! own state, and once it is back the handshakes they served meanwhile are
//! written to it, so their replays are caught across nodes again. A user's
//! `max_connections` counts the connections on every node.

mod common;

use common::clients::dd_relays;
use common::redis::RedisServer;
use common::*;
use mtgate_proto::faketls::build_client_hello;
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use mtgate_proto::RejectReason;
use mtgate_testkit::client::ObfsClient;
use mtgate_testkit::conf::TLS_NO_FRONTING;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_millis(1500);

/// A node fronting `site` with `[shared]` = `store` (where Redis is) and
/// its name, and alice (`ee`, `dd`).
async fn node(site: &MaskSite, store: &str, name: &str) -> Proxy {
    Proxy::start(&format!(
        "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\nlearn_profile = false\n\
         [shared]\n{store}\nnode = \"{name}\"\ntimeout = \"300ms\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\", \"dd\"]\n",
        site.addr
    ))
    .await
}

/// `[shared]` lines for one Redis server.
fn one(redis: &RedisServer) -> String {
    format!("redis = \"{}\"", redis.url())
}

/// What the mask site itself answers `hello` (its ServerHello shape).
async fn site_shape(site: &MaskSite, hello: &[u8]) -> Vec<(u8, usize)> {
    let direct = probe(site.addr, &[hello.to_vec()], Duration::ZERO, false, LIMIT).await;
    record_shape(&direct.bytes)
}

/// Sends `hello` to `proxy`: its answer's record shape.
async fn answer(proxy: &Proxy, hello: &[u8]) -> Vec<(u8, usize)> {
    let got = probe(proxy.addr, &[hello.to_vec()], Duration::ZERO, false, LIMIT).await;
    record_shape(&got.bytes)
}

async fn wait_for(what: &str, f: impl Fn() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(5), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_served_by_one_node_is_fronted_by_another() {
    let mut redis = RedisServer::start();
    let site = MaskSite::start(Duration::from_millis(500)).await;
    let a = node(&site, &one(&redis), "a").await;
    let b = node(&site, &one(&redis), "b").await;
    let c = node(&site, &one(&redis), "c").await;
    let now = unix_now();

    // FakeTLS: served by A, replayed to B: B answers as the site does.
    let hello = build_client_hello(&key(), DOMAIN, now, &[1; 64], 1800);
    served_by_mtgate(None, a.addr, &hello).await;
    let site_says = site_shape(&site, &hello).await;
    let got = answer(&b, &hello).await;
    assert!(
        shapes_match(&got, &site_says, 2),
        "B fronts the replay: {got:?} vs {site_says:?}"
    );
    wait_for("B counts a replay", || {
        b.counters.rejected(RejectReason::Replay) == 1
    })
    .await;
    let shared = |p: &Proxy| p.runtime.shared.clone().expect("shared");
    assert_eq!(shared(&b).stats.replays.load(Relaxed), 1);
    assert_eq!(shared(&a).stats.fresh.load(Relaxed), 1);
    // As /metrics shows it: the node, the store up, the replay fronted.
    let metrics = mtgate::admin::Metrics::new(["alice"]);
    metrics.set_shared(shared(&b));
    let text = metrics.encode().expect("metrics");
    for line in [
        "mtgate_shared_node{node=\"b\"} 1",
        "mtgate_shared_up 1",
        "mtgate_shared_replay_checks_total{result=\"replay\"} 1",
    ] {
        assert!(text.contains(line), "{line} not in {text}");
    }

    // obfuscated2 (dd): the same across nodes.
    let mut random = [7u8; 64];
    random[0] = 0x55;
    let (hdr, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key()));
    let first = probe(
        a.addr,
        &[hdr.to_vec()],
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    assert!(first.bytes.is_empty());
    wait_for("A serves the header", || {
        a.counters.authenticated.load(Relaxed) == 1
    })
    .await;
    let _ = probe(
        b.addr,
        &[hdr.to_vec()],
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    wait_for("B fronts the replayed header", || {
        b.counters.rejected(RejectReason::Replay) == 2
    })
    .await;
    assert_eq!(
        b.counters.authenticated.load(Relaxed),
        0,
        "B served nothing"
    );

    // Clients keep coming to all three nodes, one after another, through
    // what follows: Redis killed, then restarted. None may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients = tokio::spawn({
        let (stop, nodes) = (stop.clone(), [a.addr, b.addr, c.addr]);
        async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let mut i = 0u32;
            while !stop.load(Relaxed) {
                let mut random = [0u8; 64];
                mtgate_crypto::fill_random(&mut random);
                let hello = build_client_hello(&key(), DOMAIN, unix_now(), &random, 1800);
                let to = nodes[i as usize % 3];
                let got = probe(
                    to,
                    &[hello],
                    Duration::ZERO,
                    false,
                    Duration::from_millis(250),
                )
                .await;
                if record_shape(&got.bytes).get(..2) == Some(&[(0x16, 122), (0x14, 1)][..]) {
                    ok += 1;
                } else {
                    failed.push((to, got.after));
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Redis dies: every node keeps serving fresh clients promptly.
    let at = redis.addr;
    redis.kill();
    let during = build_client_hello(&key(), DOMAIN, unix_now(), &[2; 64], 1800);
    let t = Instant::now();
    served_by_mtgate(None, a.addr, &during).await;
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "no wait on a dead store"
    );
    for i in 3..6u8 {
        let h = build_client_hello(&key(), DOMAIN, unix_now(), &[i; 64], 1800);
        served_by_mtgate(None, b.addr, &h).await;
    }
    assert!(!shared(&a).is_up() && shared(&a).pending() >= 1);
    // A still refuses its own replays on its local cache.
    let (got, want) = (answer(&a, &during).await, site_shape(&site, &during).await);
    assert!(shapes_match(&got, &want, 2), "{got:?} vs {want:?}");

    // Back: what A served meanwhile reaches Redis, and B fronts its replay.
    let _redis = RedisServer::start_on(at);
    wait_for("A writes its queue", || shared(&a).pending() == 0).await;
    assert!(shared(&a).stats.reconciled.load(Relaxed) >= 1);
    wait_for("B answers again", || {
        shared(&b).pending() == 0 && shared(&b).is_up()
    })
    .await;
    let before = b.counters.rejected(RejectReason::Replay);
    let (got, want) = (answer(&b, &during).await, site_shape(&site, &during).await);
    assert!(shapes_match(&got, &want, 2), "{got:?} vs {want:?}");
    stop.store(true, Relaxed);
    let (ok, failed) = clients.await.expect("clients");
    assert!(
        failed.is_empty(),
        "clients failed: {failed:?} ({ok} served)"
    );
    assert!(ok >= 6, "only {ok} clients served");
    assert!(
        shared(&c).stats.fresh.load(Relaxed) > 0,
        "C served through the store too"
    );
    wait_for("B counts it", || {
        b.counters.rejected(RejectReason::Replay) == before + 1
    })
    .await;
}

/// A `dd` client of `secret` through `proxy` that relays a round trip.
async fn relays(proxy: SocketAddr, secret: &str) -> Option<ObfsClient> {
    dd_relays(proxy, secret, None, None).await
}

/// Two nodes sharing `redis`, DCs at `dc`, with one `dd` user and its limits.
async fn limited_nodes(
    redis: &RedisServer,
    dc: SocketAddr,
    user: &str,
    secret: &str,
    limits: &str,
) -> (Proxy, Proxy) {
    let text = |name: &str| {
        format!(
            "{TLS_NO_FRONTING}[policy]\nrefuse_action = \"close\"\n\
             [shared]\nredis = \"{}\"\nnode = \"{name}\"\n\
             [users.{user}]\nsecret = \"{secret}\"\nmodes = [\"dd\"]\n\
             [users.{user}.limits]\n{limits}\n",
            redis.url()
        )
    };
    (
        Proxy::start_with_dc(&text("a"), dc).await,
        Proxy::start_with_dc(&text("b"), dc).await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_hold_across_nodes() {
    const BOB: &str = "7d1f0c9a5be24e3186a0f4c2d9b8e617";
    let redis = RedisServer::start();
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let (a, b) = limited_nodes(&redis, dc.local_addr(), "bob", BOB, "max_connections = 2").await;
    let one = relays(a.addr, BOB).await.expect("1st on A");
    let two = relays(b.addr, BOB).await.expect("2nd on B");
    // Within two syncs every node counts both.
    let synced = Duration::from_millis(2500);
    tokio::time::sleep(synced).await;
    let shared = a.runtime.shared.clone().expect("shared");
    assert_eq!(shared.stats.nodes.load(Relaxed), 2, "A sees two nodes");
    assert!(relays(a.addr, BOB).await.is_none(), "a 3rd on A is refused");
    assert!(relays(b.addr, BOB).await.is_none(), "a 3rd on B is refused");
    // One closes on A: B has room again after the next syncs.
    drop(one);
    tokio::time::sleep(synced).await;
    let three = relays(b.addr, BOB).await.expect("room again, on B");
    drop((two, three));
}

/// Echoes `total` bytes through `c` in 16 KiB chunks; false if it ended early.
async fn pump(c: &mut ObfsClient, total: usize) -> bool {
    let chunk = vec![0x5au8; 16 * 1024];
    let mut moved = 0;
    while moved < total {
        let n = chunk.len().min(total - moved);
        if c.send_raw(&chunk[..n]).await.is_err() {
            return false;
        }
        match c.recv_exact(n).await {
            Ok(v) if v == chunk[..n] => moved += n,
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_holds_across_nodes() {
    const CAROL: &str = "3e8a51c07d2b94f6a1c5e0d8b7f3a692";
    let redis = RedisServer::start();
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let (a, b) = limited_nodes(&redis, dc.local_addr(), "carol", CAROL, "quota = 600000").await;
    // 2 × 200 000 bytes (up and down) on A.
    let mut on_a = relays(a.addr, CAROL).await.expect("A");
    assert!(pump(&mut on_a, 200_000).await);
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // B knows: 2 × 80 000 more is within the quota, the next bytes are not.
    let mut on_b = relays(b.addr, CAROL)
        .await
        .expect("B admits within the quota");
    assert!(pump(&mut on_b, 80_000).await, "within the quota");
    assert!(
        !pump(&mut on_b, 200_000).await,
        "B ends the connection at the quota"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(relays(a.addr, CAROL).await.is_none(), "over quota on A too");
    assert!(relays(b.addr, CAROL).await.is_none(), "and on B");
}

/// A `dd` round trip from the loopback address `from`.
async fn relays_from(proxy: SocketAddr, secret: &str, from: &str) -> bool {
    dd_relays(proxy, secret, Some(from), None).await.is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_edits_made_on_one_node_bite_on_the_others_within_a_second() {
    use common::admin_http::{api, spawn, ALICE, TOKEN};
    let redis = RedisServer::start();
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (pa, pb) = (free_port().port(), free_port().port());
    let shared = |name: &str| format!("[shared]\nredis = \"{}\"\nnode = \"{name}\"\n", redis.url());
    let a = spawn(da.path(), pa, dc.local_addr(), "", &shared("a"));
    let b = spawn(db.path(), pb, dc.local_addr(), "", &shared("b"));
    assert!(
        relays_from(b.addr, ALICE, "127.0.0.9").await,
        "before the block"
    );
    // Give B's subscription a moment to be in place.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, rule) = api(
        pa,
        "POST",
        "/api/v1/rules",
        TOKEN,
        serde_json::json!({ "net": "127.0.0.9/32", "level": "blocked", "note": "abuse" }),
    );
    assert_eq!(status, 201, "{rule}");
    let made = Instant::now();
    while relays_from(b.addr, ALICE, "127.0.0.9").await {
        assert!(
            made.elapsed() < Duration::from_secs(1),
            "B still serves 127.0.0.9 a second after the block"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Others still get through B; B's own API lists the rule; its trail says whence.
    assert!(relays_from(b.addr, ALICE, "127.0.0.10").await);
    let (_, rules) = api(pb, "GET", "/api/v1/rules", TOKEN, serde_json::Value::Null);
    assert!(rules.to_string().contains("127.0.0.9/32"), "{rules}");
    let trail = std::fs::read_to_string(db.path().join("audit.log")).unwrap_or_default();
    assert!(
        trail.contains("\"rules.sync\"") && trail.contains("\"a\""),
        "{trail}"
    );
    // A user made through A's API serves on B within a second too.
    const ERIN: &str = "c4f19a2e7b05d863a1e9f0b27c5d48e3";
    let (status, user) = api(
        pa,
        "POST",
        "/api/v1/users",
        TOKEN,
        serde_json::json!({
            "name": "erin", "secret": ERIN, "modes": ["dd"], "limits": { "quota": 500_000 }
        }),
    );
    assert_eq!(status, 201, "{user}");
    let made = Instant::now();
    while !relays_from(b.addr, ERIN, "127.0.0.11").await {
        assert!(
            made.elapsed() < Duration::from_secs(2),
            "B never served erin"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let trail = std::fs::read_to_string(db.path().join("audit.log")).unwrap_or_default();
    assert!(trail.contains("\"users.sync\""), "{trail}");
    // Erin's quota counts both nodes' bytes; a reset through B's API
    // resets it on every node.
    let mut on_a = dd_relays(a.addr, ERIN, None, None)
        .await
        .expect("erin on A");
    assert!(pump(&mut on_a, 200_000).await);
    drop(on_a);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut on_b = dd_relays(b.addr, ERIN, None, None)
        .await
        .expect("erin on B");
    assert!(
        !pump(&mut on_b, 100_000).await,
        "A's 400 000 bytes count on B"
    );
    let (status, reset) = api(
        pb,
        "POST",
        "/api/v1/users/erin/quota/reset",
        TOKEN,
        serde_json::json!({}),
    );
    assert_eq!(status, 200, "{reset}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut on_a = dd_relays(a.addr, ERIN, None, None)
        .await
        .expect("erin on A after the reset");
    assert!(
        pump(&mut on_a, 200_000).await,
        "the reset reached A and the shared total"
    );
    // A token made on A's API is accepted by B; revoked on B, refused by A.
    let (status, made_token) = api(
        pa,
        "POST",
        "/api/v1/tokens",
        TOKEN,
        serde_json::json!({ "name": "ops", "role": "read_only" }),
    );
    assert_eq!(status, 201, "{made_token}");
    let (token, id) = (
        made_token["token"].as_str().expect("token").to_owned(),
        made_token["id"].as_str().expect("id").to_owned(),
    );
    let made = Instant::now();
    while api(pb, "GET", "/api/v1/whoami", &token, serde_json::Value::Null).0 != 200 {
        assert!(
            made.elapsed() < Duration::from_secs(2),
            "B never took A's token"
        );
        // Slowly: a failed authentication counts toward B's per-address limit.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, _) = api(
        pb,
        "DELETE",
        &format!("/api/v1/tokens/{id}"),
        TOKEN,
        serde_json::Value::Null,
    );
    assert_eq!(status, 200);
    let revoked = Instant::now();
    while api(pa, "GET", "/api/v1/whoami", &token, serde_json::Value::Null).0 == 200 {
        assert!(
            revoked.elapsed() < Duration::from_secs(2),
            "A still takes the revoked token"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Removed on B: A serves the address again.
    let id = rule["id"].as_str().expect("id");
    let (status, _) = api(
        pb,
        "DELETE",
        &format!("/api/v1/rules/{id}"),
        TOKEN,
        serde_json::Value::Null,
    );
    assert_eq!(status, 200);
    let removed = Instant::now();
    while !relays_from(a.addr, ALICE, "127.0.0.9").await {
        assert!(
            removed.elapsed() < Duration::from_secs(2),
            "A never lifted the block"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ips_hold_across_nodes() {
    const DAVE: &str = "5b0e7c2a9d4f1836e2a7c9b0d5f83e14";
    let redis = RedisServer::start();
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let (a, b) = limited_nodes(&redis, dc.local_addr(), "dave", DAVE, "max_ips = 1").await;
    assert!(
        relays_from(a.addr, DAVE, "127.0.0.2").await,
        "the owner, on A"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        !relays_from(b.addr, DAVE, "127.0.0.3").await,
        "a 2nd address, on B"
    );
    assert!(
        relays_from(b.addr, DAVE, "127.0.0.2").await,
        "the owner's, on B"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reputation_block_on_one_node_bites_on_the_others() {
    use common::admin_http::{spawn, ALICE};
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Scope `all`: a blocked source is refused even with a valid secret
    // (the default spares authenticated clients behind a blocked address).
    let extra = |name: &str| {
        format!(
            "[shared]\nredis = \"{}\"\nnode = \"{name}\"\n\
             [policy.rate]\nscope = \"all\"\n[policy.reputation]\nthreshold = 25.0\n",
            redis.url()
        )
    };
    let pa = free_port().port();
    let a = spawn(da.path(), pa, dc.local_addr(), "", &extra("a"));
    let b = spawn(
        db.path(),
        free_port().port(),
        dc.local_addr(),
        "",
        &extra("b"),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(relays_from(b.addr, ALICE, "127.0.0.20").await, "before");
    // Three failed handshakes from 127.0.0.20 on A: A's reputation blocks it.
    for _ in 0..3 {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.20:0".parse().unwrap()).unwrap();
        if let Ok(mut s) = sock.connect(a.addr).await {
            let _ = s.write_all(&[0x42; 64]).await;
            let mut buf = [0u8; 16];
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                tokio::io::AsyncReadExt::read(&mut s, &mut buf),
            )
            .await;
        }
    }
    let start = Instant::now();
    while relays_from(b.addr, ALICE, "127.0.0.20").await {
        assert!(
            start.elapsed() < Duration::from_secs(4),
            "B still serves a source A's reputation blocked; A's trail: {}; B's: {}",
            std::fs::read_to_string(da.path().join("audit.log")).unwrap_or_default(),
            std::fs::read_to_string(db.path().join("audit.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        relays_from(b.addr, ALICE, "127.0.0.21").await,
        "others pass"
    );
    let trail = std::fs::read_to_string(db.path().join("audit.log")).unwrap_or_default();
    assert!(
        trail.contains("\"blocks.sync\"") && trail.contains("127.0.0.20"),
        "{trail}"
    );
    // Lifted through A's API: B serves the source again.
    let (status, answer) = common::admin_http::api(
        pa,
        "DELETE",
        "/api/v1/blocks/127.0.0.20",
        common::admin_http::TOKEN,
        serde_json::Value::Null,
    );
    assert_eq!(status, 200, "{answer}");
    let lifted = Instant::now();
    while !relays_from(b.addr, ALICE, "127.0.0.20").await {
        assert!(
            lifted.elapsed() < Duration::from_secs(2),
            "B kept the lifted block"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_the_master_the_sentinels_name() {
    let dir = tempfile::tempdir().unwrap();
    let master = RedisServer::start();
    let replica = RedisServer::replica_of(master.addr);
    let sentinel = RedisServer::sentinel(master.addr, dir.path());
    let site = MaskSite::start(Duration::from_millis(500)).await;
    // The URL's host is not used: the sentinels name the master.
    let store = format!(
        "redis = \"redis://127.0.0.1:1\"\nsentinels = [\"{}\"]\nmaster = \"mymaster\"",
        sentinel.addr
    );
    let (a, b) = (
        node(&site, &store, "a").await,
        node(&site, &store, "b").await,
    );
    // A handshake served on A is a replay on B, through the master.
    let replayed_across = |n: u8| {
        let (a, b, site) = (a.addr, b.addr, site.addr);
        async move {
            let hello = build_client_hello(&key(), DOMAIN, unix_now(), &[n; 64], 1800);
            served_by_mtgate(None, a, &hello).await;
            let got = probe(
                b,
                std::slice::from_ref(&hello),
                Duration::ZERO,
                false,
                LIMIT,
            )
            .await;
            let want = probe(site, &[hello], Duration::ZERO, false, LIMIT).await;
            shapes_match(&record_shape(&got.bytes), &record_shape(&want.bytes), 2)
        }
    };
    let start = Instant::now();
    while !replayed_across(1).await {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no shared window through the sentinel"
        );
    }
    // Failover: the sentinel promotes the replica; the nodes follow it.
    let answer = sentinel.command("SENTINEL FAILOVER mymaster");
    assert!(answer.starts_with("+OK"), "{answer}");
    let moved = Instant::now();
    let port = replica.addr.port().to_string();
    while !sentinel
        .command("SENTINEL get-master-addr-by-name mymaster")
        .contains(&port)
    {
        assert!(moved.elapsed() < Duration::from_secs(10), "no failover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut n = 2;
    while !replayed_across(n).await {
        assert!(
            moved.elapsed() < Duration::from_secs(15),
            "the nodes never followed the new master"
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(master);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_share_through_a_redis_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = RedisServer::cluster(dir.path());
    let seeds: Vec<String> = cluster.iter().map(|n| format!("\"{}\"", n.addr)).collect();
    let site = MaskSite::start(Duration::from_millis(500)).await;
    let store = format!(
        "redis = \"redis://127.0.0.1:1\"\ncluster = [{}]",
        seeds.join(", ")
    );
    let (a, b) = (
        node(&site, &store, "a").await,
        node(&site, &store, "b").await,
    );
    let hello = build_client_hello(&key(), DOMAIN, unix_now(), &[1; 64], 1800);
    served_by_mtgate(None, a.addr, &hello).await;
    let got = answer(&b, &hello).await;
    let want = site_shape(&site, &hello).await;
    assert!(
        shapes_match(&got, &want, 2),
        "B fronts the replay: {got:?} vs {want:?}"
    );
    // The sync's pipelines go through the cluster too: each node sees both.
    let shared = b.runtime.shared.clone().expect("shared");
    let start = Instant::now();
    while shared.stats.nodes.load(Relaxed) != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B never saw two nodes"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(shared.is_up());
    drop(a);
}
