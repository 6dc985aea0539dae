//! The IP side of the security policy (issue 7) over real sockets, with many
//! loopback source addresses (127.0.0.0/8): a blocked CIDR, a time window
//! opening and closing (injected clock), a rate limit tripping and recovering,
//! a flood driving reputation blocks while a legitimate client keeps working,
//! geo blocking from a MaxMind database written by the test, monitor mode,
//! list files reread on change, and blocks kept across a restart.
//!
//! The rate, flood and block tests use the strict scope (`policy.rate.scope =
//! "all"`), where those limits refuse before reading; the default scope,
//! which never refuses a source for volume while it authenticates, is shown
//! by `crowd.rs`.

mod common;

use common::*;
use mtgate::policy::clock::{ManualClock, SharedClock};
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::conf::dcs_table;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Monday 2026-11-23 08:00:00 UTC.
const MONDAY_8AM_MS: i64 = 1_795_420_800_000;

const BASE: &str = "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
[users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"classic\", \"dd\", \"ee\"]\n";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("fake dc")
}

async fn start(policy: &str, dc: &FakeDc, clock: Option<SharedClock>) -> Proxy {
    Proxy::start_clocked(
        "127.0.0.1:0",
        "",
        &format!("{BASE}{policy}"),
        &[dc.local_addr()],
        clock,
    )
    .await
}

/// Waits (bounded) until every session the proxy opened has closed.
async fn settle(proxy: &Proxy) {
    let c = &proxy.counters;
    for _ in 0..200 {
        if c.closed.load(Relaxed) >= c.opened.load(Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client from `from` that completes a round trip through the proxy (dd mode).
async fn works_from(proxy: SocketAddr, from: &str) -> bool {
    let opts = ClientOptions {
        bind: Some(ip(from)),
        io_timeout: Duration::from_secs(3),
        ..Default::default()
    };
    resolves_with(proxy, ClientMode::Secure, opts).await
}

/// Connects from `from` and sends `bytes`; true when the proxy closes the
/// connection within `limit` without sending a byte.
async fn closed_silently(proxy: SocketAddr, from: &str, bytes: &[u8], limit: Duration) -> bool {
    let sock = tokio::net::TcpSocket::new_v4().expect("socket");
    sock.bind(SocketAddr::new(ip(from), 0)).expect("bind");
    let Ok(mut s) = sock.connect(proxy).await else {
        return true;
    };
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(limit, s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_cidr_is_closed_and_others_work() {
    let dc = dc().await;
    let proxy = start(
        "[policy.acl]\nrules = [ { cidr = \"127.0.9.0/24\", level = \"blocked\" } ]\n",
        &dc,
        None,
    )
    .await;
    assert!(works_from(proxy.addr, "127.0.0.1").await);
    assert!(!works_from(proxy.addr, "127.0.9.7").await, "blocked CIDR");
    assert!(
        works_from(proxy.addr, "127.0.10.7").await,
        "outside the CIDR"
    );
    // A refused client sees nothing from mtgate: its connection is just closed.
    assert!(closed_silently(proxy.addr, "127.0.9.8", b"", Duration::from_secs(2)).await);
    assert!(proxy.counters.policy_refused.load(Relaxed) >= 2);
    assert_eq!(
        dc.seen().len(),
        2,
        "only the allowed clients reached the DC"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_opens_and_closes_with_the_clock() {
    let dc = dc().await;
    let clock = ManualClock::new(MONDAY_8AM_MS);
    let proxy = start(
        "[policy]\ntimezone = \"Europe/Berlin\"\n[policy.acl]\nrules = [ { cidr = \"127.0.1.0/24\", level = \"blocked\", days = [\"mon\"], hours = \"10:00-18:00\" } ]\n",
        &dc,
        Some(clock.clone()),
    )
    .await;
    // 09:00 in Berlin: before the window.
    assert!(
        works_from(proxy.addr, "127.0.1.5").await,
        "before the window"
    );
    clock.advance_ms(2 * 3_600_000); // 11:00 Berlin
    assert!(
        !works_from(proxy.addr, "127.0.1.5").await,
        "inside the window"
    );
    assert!(
        works_from(proxy.addr, "127.0.2.5").await,
        "other sources unaffected"
    );
    clock.advance_ms(8 * 3_600_000); // 19:00 Berlin
    assert!(
        works_from(proxy.addr, "127.0.1.5").await,
        "after the window"
    );
    clock.advance_ms(24 * 3_600_000); // Tuesday 19:00; Tuesday 11:00 is not in the rule
    clock.set_wall_ms(MONDAY_8AM_MS + 24 * 3_600_000 + 2 * 3_600_000);
    assert!(
        works_from(proxy.addr, "127.0.1.5").await,
        "other days are open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_trips_and_recovers() {
    let dc = dc().await;
    let clock = ManualClock::new(MONDAY_8AM_MS);
    let proxy = start(
        "[policy.rate]\nscope = \"all\"\nnew_connections_per_second = 1.0\nburst = 3\nmax_connections_per_ip = 2\n\
         [policy.reputation]\nmode = \"monitor\"\n",
        &dc,
        Some(clock.clone()),
    )
    .await;
    for i in 0..3 {
        assert!(works_from(proxy.addr, "127.0.3.1").await, "burst {i}");
        // The session of a closed client ends on the server a moment later;
        // with max_connections_per_ip = 2 a third one must not race it.
        settle(&proxy).await;
    }
    assert!(!works_from(proxy.addr, "127.0.3.1").await, "over the rate");
    assert!(works_from(proxy.addr, "127.0.3.2").await, "per source");
    clock.advance_ms(2_000);
    assert!(
        works_from(proxy.addr, "127.0.3.1").await,
        "recovered after 2 s"
    );

    // Concurrent connections per source: two open, the third refused.
    clock.advance_ms(10_000);
    let opts = || ClientOptions {
        bind: Some(ip("127.0.3.3")),
        ..Default::default()
    };
    let mut a = ObfsClient::connect_with(proxy.addr, &key(), ClientMode::Secure, 2, opts())
        .await
        .unwrap();
    a.req_pq_multi().await.expect("first");
    let mut b = ObfsClient::connect_with(proxy.addr, &key(), ClientMode::Secure, 2, opts())
        .await
        .unwrap();
    b.req_pq_multi().await.expect("second");
    assert!(
        !works_from(proxy.addr, "127.0.3.3").await,
        "third concurrent"
    );
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    clock.advance_ms(5_000);
    assert!(
        works_from(proxy.addr, "127.0.3.3").await,
        "after one closed"
    );
    assert!(b.req_pq_multi().await.is_ok(), "the open one kept working");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_from_many_sources_is_blocked_while_a_client_keeps_working() {
    let dc = dc().await;
    let proxy = start(
        "[policy.rate]\nscope = \"all\"\n[policy.reputation]\nthreshold = 25.0\nfailed_handshake = 10.0\nblock_time = \"10m\"\n",
        &dc,
        None,
    )
    .await;
    let addr = proxy.addr;
    // A legitimate client keeps a connection busy and opens new ones throughout.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let legit = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut c = ObfsClient::connect(addr, &key(), ClientMode::Secure, 2)
                .await
                .expect("legit");
            let (mut ok, mut fresh) = (0u32, 0u32);
            while !stop.load(Relaxed) {
                c.req_pq_multi()
                    .await
                    .expect("established client keeps working");
                ok += 1;
                if ok % 2 == 0 {
                    assert!(works_from(addr, "127.0.0.1").await, "new legit connection");
                    fresh += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, fresh)
        })
    };
    // 200 spoofed-looking sources, each sending garbage handshakes.
    let sources: Vec<String> = (0..200)
        .map(|i| format!("127.1.{}.{}", i / 100, 1 + i % 100))
        .collect();
    for round in 0..4 {
        let mut set = tokio::task::JoinSet::new();
        for s in sources.clone() {
            set.spawn(async move {
                closed_silently(addr, &s, &[0x42; 64], Duration::from_secs(5)).await
            });
        }
        while let Some(r) = set.join_next().await {
            assert!(
                r.expect("flood task"),
                "round {round}: garbage is closed, never answered"
            );
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Relaxed);
    let (ok, fresh) = legit.await.expect("legit task");
    assert!(
        ok >= 5 && fresh >= 1,
        "legit client made progress: {ok} round trips, {fresh} new"
    );
    let st = proxy.runtime.policy.stats();
    assert!(
        st.ips.active_blocks >= 190,
        "flooders blocked: {:?}",
        st.ips
    );
    assert!(proxy.counters.policy_refused.load(Relaxed) >= 190);
    // A blocked source stays refused even with a valid handshake; the legit one is fine.
    assert!(!works_from(addr, "127.1.0.7").await);
    assert!(works_from(addr, "127.0.0.1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn geo_database_allows_and_denies_and_is_reloaded() {
    let dc = dc().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("country.mmdb");
    mtgate_testkit::mmdb::write_mmdb(&db, &[("127.0.5.0/24", "DE"), ("127.0.6.0/24", "NL")])
        .unwrap();
    let proxy = start(
        &format!(
            "[policy.geo]\ndatabase = \"{}\"\ndeny = [\"DE\"]\nunknown = \"allow\"\n",
            db.display()
        ),
        &dc,
        None,
    )
    .await;
    assert!(!works_from(proxy.addr, "127.0.5.9").await, "DE denied");
    assert!(works_from(proxy.addr, "127.0.6.9").await, "NL allowed");
    assert!(works_from(proxy.addr, "127.0.0.1").await, "unknown allowed");
    // The database changes on disk: NL becomes DE.
    mtgate_testkit::mmdb::write_mmdb(&db, &[("127.0.5.0/24", "DE"), ("127.0.6.0/24", "DE")])
        .unwrap();
    proxy.runtime.policy.refresh_files();
    assert!(
        !works_from(proxy.addr, "127.0.6.9").await,
        "reloaded database applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_counts_but_does_not_refuse() {
    let dc = dc().await;
    let proxy = start(
        "[policy.acl]\nmode = \"monitor\"\nrules = [ { cidr = \"127.0.7.0/24\", level = \"blocked\" } ]\n",
        &dc,
        None,
    )
    .await;
    assert!(
        works_from(proxy.addr, "127.0.7.1").await,
        "monitor mode lets it through"
    );
    assert_eq!(proxy.counters.policy_monitored.load(Relaxed), 1);
    assert_eq!(proxy.counters.policy_refused.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_files_are_reread_on_change() {
    let dc = dc().await;
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block.netset");
    std::fs::write(&list, "# FireHOL style\n127.0.8.1\n\nnot-an-address\n").unwrap();
    let proxy = start(
        &format!(
            "[policy.acl]\nfiles = [ {{ path = \"{}\", level = \"blocked\" }} ]\n",
            list.display()
        ),
        &dc,
        None,
    )
    .await;
    assert!(!works_from(proxy.addr, "127.0.8.1").await);
    assert!(works_from(proxy.addr, "127.0.8.2").await);
    std::fs::write(&list, "127.0.8.0/24\n").unwrap();
    proxy.runtime.policy.refresh_files();
    assert!(
        !works_from(proxy.addr, "127.0.8.2").await,
        "new list applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_survive_a_restart() {
    let dc = dc().await;
    let state = tempfile::tempdir().unwrap();
    let extra = format!("state_dir = \"{}\"", state.path().display());
    let policy =
        "[policy.rate]\nscope = \"all\"\n[policy.reputation]\nthreshold = 15.0\nfailed_handshake = 10.0\nblock_time = \"1h\"\n";
    let a = Proxy::start_clocked(
        "127.0.0.1:0",
        &extra,
        &format!("{BASE}{policy}"),
        &[dc.local_addr()],
        None,
    )
    .await;
    for _ in 0..2 {
        assert!(closed_silently(a.addr, "127.0.4.4", &[0x42; 64], Duration::from_secs(3)).await);
    }
    assert!(
        !works_from(a.addr, "127.0.4.4").await,
        "blocked in the first process"
    );
    a.runtime.policy.save().expect("save state");
    a.stop().await;
    let b = Proxy::start_clocked(
        "127.0.0.1:0",
        &extra,
        &format!("{BASE}{policy}"),
        &[dc.local_addr()],
        None,
    )
    .await;
    assert!(
        !works_from(b.addr, "127.0.4.4").await,
        "still blocked after the restart"
    );
    assert!(works_from(b.addr, "127.0.4.5").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_and_reputation_survive_a_reload() {
    use mtgate::reload::Reloader;
    use mtgate::runtime::Live;
    let dc = dc().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mtgate.toml");
    let text = |extra_user: &str| {
        let dcs = dcs_table(&[dc.local_addr()]);
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\nwatch_config = false\n\
             {BASE}{extra_user}[policy.rate]\nscope = \"all\"\n[policy.reputation]\nthreshold = 15.0\nfailed_handshake = 10.0\nblock_time = \"1h\"\n{dcs}",
            dir.path().display()
        )
    };
    std::fs::write(&path, text("")).unwrap();
    let cfg = mtgate::config::Config::load(&path, &Default::default()).unwrap();
    let users = cfg.users.clone();
    let rt = mtgate::runtime::Runtime::build(cfg, users, Default::default()).unwrap();
    let live = Live::new(Arc::new(rt));
    let server = mtgate::server::Server::start_live(live.clone())
        .await
        .unwrap();
    let addr = server.local_addrs[0];
    for _ in 0..2 {
        assert!(closed_silently(addr, "127.0.4.9", &[0x42; 64], Duration::from_secs(3)).await);
    }
    assert!(
        !works_from(addr, "127.0.4.9").await,
        "blocked before the reload"
    );
    let reloader = Reloader::new(Some(path.clone()), Default::default(), live.clone(), None);
    std::fs::write(
        &path,
        text("[users.bob]\nsecret = \"ffeeddccbbaa99887766554433221100\"\n"),
    )
    .unwrap();
    let summary = reloader.reload().expect("reload");
    assert_eq!(summary.added, vec!["bob".to_string()]);
    assert!(
        !works_from(addr, "127.0.4.9").await,
        "still blocked after the reload"
    );
    assert!(works_from(addr, "127.0.4.10").await, "others unaffected");
    assert!(live
        .current()
        .policy
        .ips()
        .blocked_until(ip("127.0.4.9"))
        .is_some());
    server.shutdown(Duration::from_millis(200)).await;
}
