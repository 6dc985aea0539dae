//! The probe suite against mtgate with its own site (issue 25): every probe
//! of the suite is sent once to the site's own listener and once to mtgate's
//! client port; what the prober sees (bytes, TLS record shapes, how and when
//! the connection ends) must be the same. And FakeTLS answers take the shape
//! of the site's real TLS answer on the same port: ServerHello, CCS, one
//! application-data record of the length the site's own flight has.

mod common;

use common::prober::*;
use common::*;
use mtgate_proto::faketls::build_client_hello;
use std::net::IpAddr;
use std::time::Duration;

async fn proxy() -> Proxy {
    Proxy::start_full(
        "127.0.0.1:0",
        "handshake_timeout = \"10s\"\n",
        &format!(
            "[site]\nhosts = [\"{DOMAIN}\"]\n[users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n"
        ),
        &["127.0.0.1:1".parse().expect("addr")],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_probe_gets_what_the_own_site_gives() {
    let proxy = proxy().await;
    let site = proxy.runtime.site.as_ref().expect("own site").addr();
    let prober: IpAddr = "127.0.0.1".parse().expect("ip");
    let errors = run(site, proxy.addr, prober, &kinds()).await;
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    // A replayed valid hello gets the site too.
    let valid = build_client_hello(&key(), DOMAIN, unix_now(), &[7; 64], 1800);
    served_by_mtgate(None, proxy.addr, &valid).await;
    let replay = p("replayed valid hello", vec![valid], false, Cmp::Tls);
    let errors = run(site, proxy.addr, prober, &[replay]).await;
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faketls_answers_have_the_own_sites_shape() {
    let proxy = proxy().await;
    // What `mtgate run`'s profiler does: learn the fronting target, which is
    // the own site.
    let (lens, versions_first) = mtgate::profile::learn(
        &proxy.runtime.mask_host(),
        DOMAIN,
        4,
        Duration::from_secs(3),
    )
    .await
    .expect("the profile is learned from the own site");
    proxy.runtime.apply_profile(lens, versions_first);
    // The site's real TLS answer through the client port, a few times (an
    // ECDSA signature's length varies by a byte or two).
    let mut real = Vec::new();
    for _ in 0..6 {
        let seen = probe(
            proxy.addr,
            &[rustls_hello(DOMAIN)],
            Duration::ZERO,
            false,
            Duration::from_millis(500),
        )
        .await;
        real.push(record_shape(&seen.bytes));
    }
    for shape in &real {
        let kinds: Vec<u8> = shape.iter().map(|r| r.0).collect();
        assert_eq!(kinds, [0x16, 0x14, 0x17], "one flight record: {shape:?}");
    }
    // FakeTLS answers on the same port: the same records, lengths among the site's.
    for i in 0..6u8 {
        let hello = build_client_hello(&key(), DOMAIN, unix_now(), &[i; 64], 1800);
        let seen = probe(
            proxy.addr,
            &[hello],
            Duration::ZERO,
            false,
            Duration::from_millis(300),
        )
        .await;
        let fake = record_shape(&seen.bytes);
        assert_eq!(fake.len(), 3, "{fake:?}");
        assert_eq!(
            (fake[0], fake[1]),
            (real[0][0], real[0][1]),
            "ServerHello and CCS"
        );
        assert_eq!(fake[2].0, 0x17);
        assert!(
            real.iter().any(|r| r[2].1.abs_diff(fake[2].1) <= 2),
            "flight length {} vs the site's {real:?}",
            fake[2].1
        );
    }
    proxy.stop().await;
}
