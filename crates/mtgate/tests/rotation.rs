//! Secret rotation (issue 13) over real sockets: a user holds an old secret
//! that runs out and a new one that starts later. Each is served only inside
//! its window; outside it the handshake is not ours, so the real mask site
//! answers it (fronted). A session opened with the old secret is not cut when
//! the secret runs out (as a TLS session outlives its certificate).

mod common;

use common::{probe, MaskSite, Proxy, DOMAIN};
use mtgate_crypto::Key16;
use mtgate_proto::faketls::client::build_client_hello;
use mtgate_proto::faketls::verify_server_hello;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::conf::key_from_hex;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const OLD: &str = "00112233445566778899aabbccddeeff";
const NEW: &str = "0f0e0d0c0b0a09080706050403020100";

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rfc3339(t: u64) -> String {
    chrono::DateTime::from_timestamp(t as i64, 0)
        .unwrap()
        .to_rfc3339()
}

/// Sleeps until the wall clock reads `t` (Unix seconds) or later.
async fn until(t: u64) {
    while unix_now() < t {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A FakeTLS client of `key` that did a round trip to the DC.
async fn served(proxy: SocketAddr, key: &Key16) -> Option<ObfsClient> {
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.into(),
    };
    let mut c = ObfsClient::connect(proxy, key, mode, 2).await.ok()?;
    tokio::time::timeout(Duration::from_secs(3), c.req_pq_multi())
        .await
        .ok()?
        .ok()?;
    Some(c)
}

/// Who answers a ClientHello of `key`: `true` mtgate (its ServerHello
/// carries the digest of `key`), `false` the mask site (a TLS answer without it).
async fn answered_by_mtgate(proxy: SocketAddr, key: &Key16) -> bool {
    static N: AtomicU8 = AtomicU8::new(1);
    let random = [N.fetch_add(1, Ordering::Relaxed); 64];
    let hello = build_client_hello(key, DOMAIN, unix_now() as u32, &random, 517);
    let mut client_random = [0u8; 32];
    client_random.copy_from_slice(&hello[11..43]);
    let seen = probe(
        proxy,
        &[hello],
        Duration::ZERO,
        false,
        Duration::from_millis(800),
    )
    .await;
    assert!(
        seen.bytes.starts_with(&[0x16, 0x03]),
        "a TLS answer either way: {:?}",
        &seen.bytes[..seen.bytes.len().min(16)]
    );
    verify_server_hello(&seen.bytes, &client_random, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_secret_is_served_inside_its_window_and_fronted_outside() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("dc");
    let site = MaskSite::start(Duration::from_secs(1)).await;
    let t0 = unix_now();
    // The new secret from t0+5; the old one until t0+7 (an overlap).
    let (starts, ends) = (t0 + 5, t0 + 7);
    let proxy = Proxy::start_with_dc(
        &format!(
            "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\nlearn_profile = false\n\
             [users.alice]\nsecret = \"{OLD}\"\nnot_after = \"{}\"\nmodes = [\"ee\"]\n\
             [[users.alice.secrets]]\nsecret = \"{NEW}\"\nnot_before = \"{}\"\n",
            site.addr,
            rfc3339(ends),
            rfc3339(starts),
        ),
        dc.local_addr(),
    )
    .await;
    let (old, new) = (key_from_hex(OLD), key_from_hex(NEW));

    // Before the new one starts: the old secret serves, the new one is fronted.
    assert!(unix_now() < starts, "the test set up in time");
    let mut kept = served(proxy.addr, &old)
        .await
        .expect("old secret in its window");
    assert!(answered_by_mtgate(proxy.addr, &old).await);
    assert!(!answered_by_mtgate(proxy.addr, &new).await, "new: not yet");
    assert!(served(proxy.addr, &new).await.is_none());
    assert!(unix_now() < starts, "checked before the start");

    // The overlap: both serve.
    until(starts).await;
    if unix_now() <= ends {
        assert!(
            served(proxy.addr, &new).await.is_some(),
            "new from its start"
        );
    }

    // After the old one ends: the new serves, the old is fronted.
    until(ends + 1).await;
    assert!(
        served(proxy.addr, &new).await.is_some(),
        "new after the overlap"
    );
    assert!(!answered_by_mtgate(proxy.addr, &old).await, "old: run out");
    assert!(served(proxy.addr, &old).await.is_none());

    // The session opened with the old secret goes on.
    assert!(
        matches!(
            tokio::time::timeout(Duration::from_secs(3), kept.req_pq_multi()).await,
            Ok(Ok(_))
        ),
        "an open session outlives its secret's window"
    );
    proxy.stop().await;
}
