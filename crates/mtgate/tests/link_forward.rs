//! A forwarding bridge (`[link.bridge] mode = "forward"`, issue 15): the
//! bridge holds no client secrets and hands each client's raw connection
//! over the link; the exit runs the session with its own users, so the
//! exit can open an ME connection with the promotion tag, and fronts what
//! is not a client to its mask host, all through the bridge.

mod common;
mod me;

use common::link::{bridge, exit_with, res_pq, rig, Rig};
use mtgate::link::config::b64;
use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::Cipher;
use mtgate_testkit::fake_dc::FakeDcMode;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exit_runs_forwarded_sessions_with_its_own_users_and_fronts_probes() {
    let Rig {
        dc,
        mask,
        mut seen,
        key,
        token,
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit_with(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
        "",
    )
    .await;
    // The bridge's own users do not include alice: it only forwards.
    let b = bridge(
        x.link.unwrap(),
        &key.public(),
        &token,
        &Cipher::ALL,
        "mode = \"forward\"\n[users.other]\nsecret = \"0f1e2d3c4b5a69788796a5b4c3d2e1f0\"",
    )
    .await;
    for _ in 0..3 {
        res_pq(b.addr)
            .await
            .expect("alice's session, run by the exit");
    }
    assert!(x.runtime.link_stats.exit.streams.load(Relaxed) >= 3);
    assert_eq!(
        x.counters.authenticated.load(Relaxed),
        3,
        "the exit authenticated them"
    );
    assert_eq!(
        b.counters.authenticated.load(Relaxed),
        0,
        "the bridge ran no session"
    );
    // A prober on the bridge's port meets the exit's mask host.
    let mut p = tokio::net::TcpStream::connect(b.addr).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    p.write_all(get).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .expect("the probe reached the mask host")
        .unwrap();
    assert_eq!(got, get);
    b.stop().await;
    x.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_bridge_reaches_middle_ends_through_the_exit() {
    if !me::available() {
        return;
    }
    let fake = me::FakeMe::start(2, &[]).await;
    let key = ExitKey::generate();
    let token = Token::generate();
    let exit_table = format!(
        "[link.exit]\nlisten = \"127.0.0.1:0\"\nkey = \"{}\"\ntokens = {{ msk = \"{}\" }}\n",
        b64(key.secret()),
        b64(token.bytes())
    );
    let exit = me::MeProxy::start_full(
        &fake,
        &fake.multi_conf(),
        &[],
        me::dead_dc(),
        "127.0.0.1",
        &exit_table,
    )
    .await;
    assert!(exit.wait_ready(2).await, "the exit's ME links are ready");
    let b = bridge(
        exit.link.unwrap(),
        &key.public(),
        &token,
        &Cipher::ALL,
        "mode = \"forward\"",
    )
    .await;
    let (ok, out) = me::fake_client(b.addr, &["--scenario", "all"], me::T).await;
    assert!(ok, "the oracle's client through bridge and exit:\n{out}");
    let reqs = fake.events("proxy_req");
    assert!(!reqs.is_empty());
    for r in &reqs {
        assert_eq!(me::field(r, "ad_tag"), Some(me::AD_TAG), "{r}");
    }
    b.stop().await;
    exit.stop().await;
}

/// `mtgate doctor` on a bridge probes each DC through its link: a resPQ
/// from the exit's DC when the keys are right, the link named as the fix
/// when the token is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doctor_probes_a_bridges_dcs_through_its_link() {
    let Rig {
        dc,
        mask,
        key,
        token,
        ..
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit_with(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
        "",
    )
    .await;
    let opts = mtgate::doctor::DoctorOpts {
        timeout: Duration::from_secs(3),
        ..Default::default()
    };
    for (t, ok) in [(token.clone(), true), (Token::generate(), false)] {
        let b = bridge(x.link.unwrap(), &key.public(), &t, &Cipher::ALL, "").await;
        let report = mtgate::doctor::run(&b.runtime.config, &opts).await;
        let dcs: Vec<_> = report
            .checks
            .iter()
            .filter(|c| c.name.starts_with("dc ") && c.name.contains("link dc"))
            .collect();
        assert!(dcs.len() >= 5, "{:?}", report.checks);
        for c in &dcs {
            assert_eq!(c.status == mtgate::doctor::Status::Ok, ok, "{c:?}");
            if !ok {
                assert!(
                    c.fix.as_deref().unwrap_or("").contains("[link.bridge]"),
                    "{c:?}"
                );
            }
        }
        b.stop().await;
    }
    x.stop().await;
}

/// A forwarding bridge admits clients by its own policy before the link:
/// a blocked network never reaches the exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_bridge_refuses_by_its_own_policy() {
    let Rig {
        dc,
        mask,
        key,
        token,
        ..
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit_with(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
        "",
    )
    .await;
    let b = bridge(
        x.link.unwrap(),
        &key.public(),
        &token,
        &Cipher::ALL,
        "mode = \"forward\"\n[policy.acl]\nrules = [ { cidr = \"127.0.9.0/24\", level = \"blocked\" } ]",
    )
    .await;
    let from = |ip: &str| mtgate_testkit::client::ClientOptions {
        bind: Some(ip.parse().unwrap()),
        ..Default::default()
    };
    let secure = || mtgate_testkit::client::ClientMode::Secure;
    assert!(common::resolves_with(b.addr, secure(), from("127.0.0.1")).await);
    let streams = x.runtime.link_stats.exit.streams.load(Relaxed);
    assert!(!common::resolves_with(b.addr, secure(), from("127.0.9.7")).await);
    assert_eq!(
        x.runtime.link_stats.exit.streams.load(Relaxed),
        streams,
        "the refused client never reached the exit"
    );
    b.stop().await;
    x.stop().await;
}
