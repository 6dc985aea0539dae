//! The probe suite (issue 4): every probe of "Detecting Probe-resistant
//! Proxies" (Frolov et al., NDSS 2020) and more is sent once to a real TLS site
//! on loopback directly, and once to mtgate fronting that site. What the
//! prober receives — the bytes (TLS record shapes where the content is random
//! per connection), how the connection ends (FIN, RST, still open) and when —
//! must be the same.

mod common;

use common::*;
use mtgate_crypto::Key16;
use mtgate_proto::faketls::build_client_hello;
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use std::time::Duration;

const SITE_IDLE: Duration = Duration::from_millis(1000);
const LIMIT: Duration = Duration::from_millis(3500);
const TOLERANCE: Duration = Duration::from_millis(400);

async fn setup(modes: &str) -> (MaskSite, Proxy) {
    let site = MaskSite::start(SITE_IDLE).await;
    let proxy = Proxy::start(&format!(
        "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\nlearn_profile = false\n[users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [{modes}]\n",
        site.addr
    ))
    .await;
    (site, proxy)
}

/// Sends the same probe to the site and through mtgate; checks both saw the same.
async fn same(
    site: &MaskSite,
    proxy: &Proxy,
    name: &str,
    chunks: Vec<Vec<u8>>,
    gap: Duration,
    half_close: bool,
    exact: bool,
) {
    let (direct, fronted) = tokio::join!(
        probe(site.addr, &chunks, gap, half_close, LIMIT),
        probe(proxy.addr, &chunks, gap, half_close, LIMIT)
    );
    assert_eq!(
        direct.end, fronted.end,
        "{name}: end differs: direct {direct:?} fronted {fronted:?}"
    );
    let dt = direct.after.abs_diff(fronted.after);
    assert!(
        dt < TOLERANCE,
        "{name}: timing differs by {dt:?}: direct {:?} fronted {:?}",
        direct.after,
        fronted.after
    );
    if exact {
        assert_eq!(direct.bytes, fronted.bytes, "{name}: bytes differ");
    } else {
        let (a, b) = (record_shape(&direct.bytes), record_shape(&fronted.bytes));
        assert!(
            shapes_match(&a, &b, 2),
            "{name}: record shapes differ: direct {a:?} fronted {b:?}"
        );
        assert!(
            !direct.bytes.is_empty(),
            "{name}: the site said nothing; the probe is not exercising a handshake"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_tls_probes_look_like_the_site() {
    let (site, proxy) = setup("\"ee\"").await;
    let mut rnd = vec![0u8; 2000];
    mtgate_crypto::fill_random(&mut rnd);
    rnd[0] = 0x42;
    let one = Duration::from_millis(10);
    let probes: Vec<(&str, Vec<Vec<u8>>, bool)> = vec![
        ("empty", vec![], false),
        ("empty, half-closed", vec![], true),
        ("random 1 byte", vec![rnd[..1].to_vec()], false),
        ("random 17 bytes", vec![rnd[..17].to_vec()], false),
        ("random 64 bytes", vec![rnd[..64].to_vec()], false),
        ("random 2000 bytes", vec![rnd.clone()], false),
        (
            "http get",
            vec![b"GET / HTTP/1.1\r\nHost: mask.test\r\n\r\n".to_vec()],
            false,
        ),
        (
            "http get, half-closed",
            vec![b"GET / HTTP/1.1\r\nHost: mask.test\r\n\r\n".to_vec()],
            true,
        ),
        ("tls-looking 3 bytes", vec![vec![0x16, 0x03, 0x01]], false),
        (
            "tls header then garbage",
            vec![vec![0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5]],
            false,
        ),
        (
            "trickle",
            vec![vec![0x16], vec![0x03], vec![0x01], vec![0x02]],
            false,
        ),
    ];
    let tasks: Vec<_> = probes
        .into_iter()
        .map(|(name, chunks, hc)| same(&site, &proxy, name, chunks, one, hc, true))
        .collect();
    futures_join_all(tasks).await;
    assert_eq!(
        proxy
            .counters
            .authenticated
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_probes_get_the_sites_handshake() {
    let (site, proxy) = setup("\"ee\"").await;
    let now = unix_now();
    let r = |b: u8| [b; 64];
    let wrong = Key16::new([0x77; 16]);
    let valid = build_client_hello(&key(), DOMAIN, now, &r(1), 1800);
    // Used once (valid: mtgate answers), then replayed.
    served_by_mtgate(None, proxy.addr, &valid).await;
    let probes: Vec<(&str, Vec<u8>)> = vec![
        (
            "wrong secret",
            build_client_hello(&wrong, DOMAIN, now, &r(2), 517),
        ),
        ("replayed valid hello", valid.clone()),
        (
            "stale timestamp",
            build_client_hello(&key(), DOMAIN, now - 3600, &r(3), 1800),
        ),
        (
            "future timestamp",
            build_client_hello(&key(), DOMAIN, now + 3600, &r(4), 1800),
        ),
        (
            "unknown sni",
            build_client_hello(&key(), "other.test", now, &r(5), 1800),
        ),
        (
            "big hello, wrong secret",
            build_client_hello(&wrong, DOMAIN, now, &r(6), 12_000),
        ),
    ];
    for (name, hello) in probes {
        same(
            &site,
            &proxy,
            name,
            vec![hello],
            Duration::ZERO,
            false,
            false,
        )
        .await;
    }
    // Truncated hello: the site waits for the rest, then times out; so must mtgate.
    let cut = build_client_hello(&wrong, DOMAIN, now, &r(7), 1800)[..300].to_vec();
    same(
        &site,
        &proxy,
        "truncated hello",
        vec![cut],
        Duration::ZERO,
        false,
        true,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_obfuscated2_header_is_fronted() {
    let (site, proxy) = setup("\"ee\", \"dd\", \"classic\"").await;
    let mut random = [0u8; 64];
    mtgate_crypto::fill_random(&mut random);
    random[0] = 0x55;
    random[4] = 1;
    let (hdr, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key()));
    // First use: accepted (the DC is unreachable in this test, which is fine: no bytes to the client).
    let first = probe(
        proxy.addr,
        &[hdr.to_vec()],
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    assert!(first.bytes.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        proxy
            .counters
            .authenticated
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    same(
        &site,
        &proxy,
        "replayed obfs2 header",
        vec![hdr.to_vec()],
        Duration::ZERO,
        false,
        true,
    )
    .await;
    assert_eq!(
        proxy
            .counters
            .authenticated
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the replay was not served"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        proxy.counters.rejected(mtgate_proto::RejectReason::Replay),
        1
    );
    assert!(
        proxy
            .counters
            .fronted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mask_profile_is_learned_from_the_site() {
    let site = MaskSite::start(SITE_IDLE).await;
    let (lens, _versions_first) =
        mtgate::profile::learn(&site.addr.to_string(), DOMAIN, 2, Duration::from_secs(3))
            .await
            .expect("profile");
    // A rustls site sends EncryptedExtensions..Finished; the imitation is one record of that size.
    assert_eq!(lens.len(), 2);
    assert!(lens[0] > 300, "{lens:?}");
    let proxy = Proxy::start(&format!(
        "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\nlearn_profile = false\n[users.alice]\nsecret = \"{KEY_HEX}\"\n",
        site.addr
    ))
    .await;
    proxy.runtime.apply_profile(lens.clone(), false);
    let hello = build_client_hello(&key(), DOMAIN, unix_now(), &[9; 64], 1800);
    let seen = probe(
        proxy.addr,
        &[hello],
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    let shape = record_shape(&seen.bytes);
    assert_eq!(shape[2].0, 0x17);
    assert!(
        lens.contains(&(shape[2].1 as u32)),
        "fake flight imitates the site: {shape:?} vs {lens:?}"
    );
}

/// Issue 17: a mask site that is unreachable at start is learned once it
/// comes up, within the retry back-off (not an hour later).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_is_learned_once_the_mask_site_comes_up() {
    let spot = free_port();
    let proxy = Proxy::start(&format!(
        "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{spot}\"\n[users.alice]\nsecret = \"{KEY_HEX}\"\n"
    ))
    .await;
    let live = mtgate::runtime::Live::new(proxy.runtime.clone());
    let task = mtgate::runtime::spawn_profiler_with(
        live,
        Duration::from_secs(3600),
        Duration::from_millis(200),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let learned = || !proxy.runtime.handshake.load().observed_cert_lens.is_empty();
    assert!(!learned(), "nothing to learn from yet");
    let _site = MaskSite::start_on(spot, SITE_IDLE).await;
    let t0 = std::time::Instant::now();
    while !learned() && t0.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(learned(), "the profile was learned once the site came up");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    task.abort();
}

async fn futures_join_all<F: std::future::Future<Output = ()>>(v: Vec<F>) {
    let mut set = Vec::new();
    for f in v {
        set.push(Box::pin(f));
    }
    for f in set {
        f.await;
    }
}
