//! Per-user limits end to end over real loopback sockets: lifetime and
//! calendar quotas (reached mid-connection, reset at local midnight), the
//! bandwidth cap, unique-IP and concurrent-connection limits, disabled and
//! expired users, usage kept across a restart (in-process and the real
//! binary) and across a reload, and monitor mode. Every test is bounded.

mod common;

use common::MtgateProcess;
use mtgate::config::{Config, Overrides};
use mtgate::events::{Event, EventSink, Telemetry};
use mtgate::policy::clock::{ManualClock, SharedClock, SystemClock};
use mtgate::policy::engine::Policy;
use mtgate::policy::PolicyReason;
use mtgate::reload::Reloader;
use mtgate::runtime::{Live, Runtime};
use mtgate::server::Server;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::conf::key_from_hex as key;
use mtgate_testkit::conf::{dcs_table, TLS_NO_FRONTING};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ALICE: &str = "00112233445566778899aabbccddeeff";
const BOB: &str = "ffeeddccbbaa99887766554433221100";
const CAROL: &str = "0f0e0d0c0b0a09080706050403020100";
const DAVE: &str = "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf";
/// 2026-11-23T10:00:00Z (11:00 in Berlin).
const T0_MS: i64 = 1_795_428_000_000;
/// 2026-11-24T00:00 Europe/Berlin = 2026-11-23T23:00:00Z.
const BERLIN_MIDNIGHT_MS: i64 = 1_795_474_800_000;
const CHUNK: usize = 64 * 1024;

/// Runs a test body with an overall limit.
async fn bounded<F: Future<Output = ()>>(secs: u64, f: F) {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .expect("test ran past its time limit");
}

/// Records every policy hit: (reason, enforced).
#[derive(Default)]
struct Hits(Mutex<Vec<(PolicyReason, bool)>>);

impl EventSink for Hits {
    fn emit(&self, e: &Event<'_>) {
        if let Event::PolicyHit {
            reason, enforced, ..
        } = e
        {
            self.0.lock().unwrap().push((*reason, *enforced));
        }
    }
}

impl Hits {
    fn count(&self, reason: PolicyReason, enforced: bool) -> usize {
        let v = self.0.lock().unwrap();
        v.iter().filter(|h| **h == (reason, enforced)).count()
    }
}

/// `[users.NAME]` with its `[users.NAME.limits]` lines.
fn user(name: &str, secret: &str, limits: &str) -> String {
    format!(
        "[users.{name}]\nsecret = \"{secret}\"\nmodes = [\"classic\", \"dd\"]\n[users.{name}.limits]\n{limits}\n"
    )
}

/// A whole config: loopback only, every DC at `dc`, no fronting.
fn config_text(dc: SocketAddr, state: &Path, server: &str, policy: &str, users: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nhandshake_timeout = \"2s\"\n\
         state_dir = \"{}\"\nwatch_config = false\n{server}\n\
         {TLS_NO_FRONTING}[policy]\nrefuse_action = \"close\"\n{policy}\n{}{users}",
        state.display(),
        dcs_table(&[dc])
    )
}

/// An in-process proxy on a config file, with a reloader and a policy-hit sink.
struct Harness {
    addr: SocketAddr,
    live: Arc<Live>,
    reloader: Arc<Reloader>,
    hits: Arc<Hits>,
    path: PathBuf,
    _dir: tempfile::TempDir,
    server: Option<Server>,
}

impl Harness {
    async fn start(text: &str, clock: Option<SharedClock>) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("mtgate.toml");
        std::fs::write(&path, text).expect("write config");
        let cfg = Config::load(&path, &Overrides::default()).expect("config");
        let hits = Arc::new(Hits::default());
        let tel = Telemetry::new(vec![hits.clone()]);
        let users = cfg.users.clone();
        let clock = clock.unwrap_or_else(SystemClock::shared);
        let rt = Runtime::build_with_clock(cfg, users, tel, clock).expect("runtime");
        let live = Live::new(Arc::new(rt));
        let server = Server::start_live(live.clone()).await.expect("start");
        let reloader = Reloader::new(Some(path.clone()), Overrides::default(), live.clone(), None);
        Harness {
            addr: server.local_addrs[0],
            live,
            reloader,
            hits,
            path,
            _dir: dir,
            server: Some(server),
        }
    }

    fn policy(&self) -> Arc<Policy> {
        self.live.current().policy.clone()
    }

    /// Up + down bytes charged to `name` so far.
    fn used(&self, name: &str) -> u64 {
        let u = self.policy().users().usage(name).expect("known user");
        u.up + u.down
    }

    /// Waits until `name` has `n` open connections (leases are released when
    /// the proxy notices a close).
    async fn wait_active(&self, name: &str, n: u32) {
        let start = Instant::now();
        while self.policy().users().usage(name).expect("user").active != n {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{name} never reached {n} active connections"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(200)).await;
        }
    }
}

async fn echo_dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc")
}

async fn open(addr: SocketAddr, secret: &str, bind: Option<IpAddr>) -> ObfsClient {
    let opts = ClientOptions {
        bind,
        io_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    let mode = ClientMode::Classic(ProtoTag::Intermediate);
    ObfsClient::connect_with(addr, &key(secret), mode, 2, opts)
        .await
        .expect("connect")
}

/// A small echo round trip through the proxy and the DC.
async fn echo_ok(c: &mut ObfsClient) -> bool {
    let probe: Vec<u8> = (0..64u8).collect();
    let rt = async {
        c.send_raw(&probe).await?;
        c.recv_exact(probe.len()).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(3), rt).await, Ok(Ok(v)) if v == probe)
}

/// Connects (from `bind`) and checks a round trip; the open client if it relays.
async fn try_conn(addr: SocketAddr, secret: &str, bind: Option<&str>) -> Option<ObfsClient> {
    let mut c = open(addr, secret, bind.map(|b| b.parse().expect("ip"))).await;
    echo_ok(&mut c).await.then_some(c)
}

/// Sends `chunk`-sized blocks and reads their echo until `limit` bytes (up +
/// down, as the client saw them) have crossed or the connection fails.
/// Returns (bytes moved, whether it ended early).
async fn pump(c: &mut ObfsClient, chunk: usize, limit: u64) -> (u64, bool) {
    let data = vec![0x5au8; chunk];
    let mut moved = 0u64;
    let run = async {
        while moved < limit {
            if c.send_raw(&data).await.is_err() {
                return true;
            }
            moved += chunk as u64;
            match c.recv_exact(chunk).await {
                Ok(v) if v == data => moved += chunk as u64,
                _ => return true,
            }
        }
        false
    };
    let ended = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("pump stalled");
    (moved, ended)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_reached_mid_connection_closes_it_and_refuses_the_next() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let users = user("alice", ALICE, "quota = 200000");
        let p = Harness::start(
            &config_text(dc.local_addr(), st.path(), "", "", &users),
            None,
        )
        .await;
        let mut c = try_conn(p.addr, ALICE, None)
            .await
            .expect("first connection relays");
        let (moved, ended) = pump(&mut c, CHUNK, 4_000_000).await;
        assert!(ended, "the proxy closed the connection");
        assert!((150_000..1_000_000).contains(&moved), "moved {moved}");
        let used = p.used("alice");
        assert!(
            (200_000..200_000 + 2 * CHUNK as u64).contains(&used),
            "used {used}"
        );
        assert!(c.closed_within(Duration::from_secs(3)).await);

        assert!(
            try_conn(p.addr, ALICE, None).await.is_none(),
            "over quota: refused"
        );
        let policy = p.policy();
        assert_eq!(policy.stats().users_over_quota, 1);
        assert!(policy.users().usage("alice").unwrap().over_quota);
        assert_eq!(p.hits.count(PolicyReason::UserQuota, true), 1);
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daily_quota_resets_at_local_midnight() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let users = user(
            "alice",
            ALICE,
            "quota_period = \"daily\"\nquota_per_period = 100000",
        );
        let policy = "timezone = \"Europe/Berlin\"";
        let text = config_text(dc.local_addr(), st.path(), "", policy, &users);
        let p = Harness::start(&text, Some(clock.clone())).await;
        let mut c = try_conn(p.addr, ALICE, None).await.expect("relays");
        let (moved, ended) = pump(&mut c, 16 * 1024, 1_000_000).await;
        assert!(ended && moved < 200_000, "ended {ended} after {moved}");
        let u = p.policy().users().usage("alice").unwrap();
        assert!(u.over_quota);
        // The period ends at midnight in Berlin, not in UTC.
        assert_eq!(u.period_end_ms, Some(BERLIN_MIDNIGHT_MS));
        drop(c);
        assert!(
            try_conn(p.addr, ALICE, None).await.is_none(),
            "exhausted today"
        );

        // 22:59 UTC is still the same day in Berlin.
        clock.set_wall_ms(BERLIN_MIDNIGHT_MS - 60_000);
        assert!(try_conn(p.addr, ALICE, None).await.is_none(), "still today");
        clock.set_wall_ms(BERLIN_MIDNIGHT_MS + 60_000);
        let mut c = try_conn(p.addr, ALICE, None).await.expect("a new day");
        let (moved, _) = pump(&mut c, 16 * 1024, 64 * 1024).await;
        assert_eq!(moved, 64 * 1024, "the new period's quota relays");
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_holds_within_ten_percent() {
    bounded(60, async {
        const RATE: u64 = 262_144;
        const TOTAL: usize = 1024 * 1024;
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let limits = format!("bandwidth_up = {RATE}\nbandwidth_down = {RATE}");
        let users = user("alice", ALICE, &limits);
        let p = Harness::start(
            &config_text(dc.local_addr(), st.path(), "", "", &users),
            None,
        )
        .await;
        let mut c = try_conn(p.addr, ALICE, None).await.expect("relays");
        // Two chunks in flight so both directions run at once (each has its
        // own bucket); small enough to fit loopback socket buffers.
        let chunk = 32 * 1024;
        let data = vec![7u8; chunk];
        let n = TOTAL / chunk;
        let start = Instant::now();
        c.send_raw(&data).await.expect("send");
        for i in 0..n {
            if i + 1 < n {
                c.send_raw(&data).await.expect("send");
            }
            let got = c.recv_exact(chunk).await.expect("echo");
            assert_eq!(got, data);
        }
        let secs = start.elapsed().as_secs_f64();
        // GCRA with burst B = RATE/8 (bandwidth::burst_for): the first B bytes
        // pass at once, the rest at RATE, so an ideal transfer of N bytes in
        // each direction (both directions in parallel) takes (N - B) / RATE
        // seconds: 3.875 s here; achieved rate = N / t ~ 1.03 * RATE. Allow
        // +-10 % around RATE.
        let burst = (RATE / 8) as f64;
        let ideal = (TOTAL as f64 - burst) / RATE as f64;
        let rate = TOTAL as f64 / secs;
        assert!(
            (0.9 * RATE as f64..=1.1 * RATE as f64).contains(&rate),
            "achieved {rate:.0} B/s in {secs:.2}s (ideal {ideal:.2}s) vs cap {RATE}"
        );
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_ip_limit_counts_sources_within_the_window() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let users = user("alice", ALICE, "max_ips = 2\nips_window = \"1h\"");
        let text = config_text(dc.local_addr(), st.path(), "", "", &users);
        let p = Harness::start(&text, Some(clock.clone())).await;
        let a = try_conn(p.addr, ALICE, Some("127.0.0.2"))
            .await
            .expect(".2");
        let b = try_conn(p.addr, ALICE, Some("127.0.0.3"))
            .await
            .expect(".3");
        assert!(
            try_conn(p.addr, ALICE, Some("127.0.0.4")).await.is_none(),
            "3rd IP"
        );
        assert_eq!(p.hits.count(PolicyReason::UserIps, true), 1);
        let a2 = try_conn(p.addr, ALICE, Some("127.0.0.2"))
            .await
            .expect("known IP returns");
        drop((a, b, a2));
        p.wait_active("alice", 0).await;
        clock.advance_ms(30 * 60 * 1000);
        assert!(
            try_conn(p.addr, ALICE, Some("127.0.0.4")).await.is_none(),
            "closed IPs stay recent within the window"
        );
        clock.advance_ms(31 * 60 * 1000);
        assert!(
            try_conn(p.addr, ALICE, Some("127.0.0.4")).await.is_some(),
            "window passed"
        );
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_connection_limit() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let users = user("alice", ALICE, "max_connections = 2");
        let p = Harness::start(
            &config_text(dc.local_addr(), st.path(), "", "", &users),
            None,
        )
        .await;
        let a = try_conn(p.addr, ALICE, None).await.expect("1st");
        let mut b = try_conn(p.addr, ALICE, None).await.expect("2nd");
        assert!(try_conn(p.addr, ALICE, None).await.is_none(), "3rd refused");
        assert_eq!(p.hits.count(PolicyReason::UserConnections, true), 1);
        drop(a);
        p.wait_active("alice", 1).await;
        let _c = try_conn(p.addr, ALICE, None)
            .await
            .expect("a slot is free again");
        assert!(echo_ok(&mut b).await, "the survivor still relays");
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_expired_users_are_refused() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0_MS);
        let users = [
            user("alice", ALICE, "enabled = true"),
            user("bob", BOB, "enabled = false"),
            user("carol", CAROL, "expires = \"2026-11-23T09:00:00Z\""),
            user("dave", DAVE, "expires = \"2026-11-23T11:00:00Z\""),
        ]
        .concat();
        let text = config_text(dc.local_addr(), st.path(), "", "", &users);
        let p = Harness::start(&text, Some(clock.clone())).await;
        assert!(try_conn(p.addr, ALICE, None).await.is_some(), "alice works");
        assert!(try_conn(p.addr, BOB, None).await.is_none(), "disabled");
        assert!(try_conn(p.addr, CAROL, None).await.is_none(), "expired");
        assert!(
            try_conn(p.addr, DAVE, None).await.is_some(),
            "not yet expired"
        );
        clock.advance_ms(2 * 3600 * 1000);
        assert!(
            try_conn(p.addr, DAVE, None).await.is_none(),
            "expired since"
        );
        assert!(
            try_conn(p.addr, ALICE, None).await.is_some(),
            "alice unaffected"
        );
        assert_eq!(p.hits.count(PolicyReason::UserDisabled, true), 1);
        assert_eq!(p.hits.count(PolicyReason::UserExpired, true), 2);
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_survives_an_in_process_restart() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let users = user("alice", ALICE, "quota = 300000");
        let text = config_text(dc.local_addr(), st.path(), "", "", &users);
        let p = Harness::start(&text, None).await;
        let mut c = try_conn(p.addr, ALICE, None).await.expect("relays");
        let (_, ended) = pump(&mut c, 32 * 1024, 196_608).await;
        assert!(!ended);
        drop(c);
        p.wait_active("alice", 0).await;
        let before = p.used("alice");
        assert!(before >= 196_608, "used {before}");
        p.policy().save().expect("save");
        p.stop().await;

        let q = Harness::start(&text, None).await;
        assert_eq!(
            q.used("alice"),
            before,
            "usage restored from the state file"
        );
        let mut c = try_conn(q.addr, ALICE, None)
            .await
            .expect("still under quota");
        let (moved, ended) = pump(&mut c, 16 * 1024, 1_000_000).await;
        assert!(ended && moved < 150_000, "ended {ended} after {moved}");
        let used = q.used("alice");
        assert!(
            (300_000..300_000 + 64 * 1024).contains(&used),
            "used {used}"
        );
        assert!(try_conn(q.addr, ALICE, None).await.is_none(), "over quota");
        q.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_keeps_usage_across_sigterm_restart() {
    bounded(90, async {
        let dc = echo_dc().await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mtgate.toml");
        let users = user("alice", ALICE, "quota = 100000") + &user("bob", BOB, "enabled = true");
        let text = config_text(
            dc.local_addr(),
            dir.path(),
            "[admin]\nenabled = false",
            "persist_interval = \"200ms\"",
            &users,
        );
        std::fs::write(&path, text).expect("write config");
        let mut child = MtgateProcess::spawn(&path, dir.path(), std::process::Stdio::null());
        let mut c = try_conn(child.addr, ALICE, None).await.expect("relays");
        let (_, ended) = pump(&mut c, 16 * 1024, 1_000_000).await;
        assert!(ended, "quota closes the connection");
        assert!(
            try_conn(child.addr, ALICE, None).await.is_none(),
            "over quota"
        );
        tokio::time::sleep(Duration::from_millis(600)).await;
        child.signal("TERM");
        assert!(
            child.wait_exit(Duration::from_secs(10)).is_some(),
            "exits on TERM"
        );
        assert!(
            dir.path().join("policy-state.json").exists(),
            "state written"
        );

        let child = MtgateProcess::spawn(&path, dir.path(), std::process::Stdio::null());
        assert!(
            try_conn(child.addr, ALICE, None).await.is_none(),
            "still over quota after the restart"
        );
        assert!(
            try_conn(child.addr, BOB, None).await.is_some(),
            "the restarted proxy relays"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_usage_and_the_quota_bites_at_the_same_total() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let alice = user("alice", ALICE, "quota = 300000");
        let text = config_text(dc.local_addr(), st.path(), "", "", &alice);
        let p = Harness::start(&text, None).await;
        let mut c = try_conn(p.addr, ALICE, None).await.expect("relays");
        let (_, ended) = pump(&mut c, 32 * 1024, 196_608).await;
        assert!(!ended);
        let before = p.used("alice");

        let both = format!("{alice}{}", user("bob", BOB, "enabled = true"));
        let text2 = config_text(dc.local_addr(), st.path(), "", "", &both);
        std::fs::write(&p.path, text2).expect("rewrite");
        let summary = p.reloader.reload().expect("reload");
        assert_eq!(summary.added, vec!["bob".to_string()]);
        assert_eq!(p.used("alice"), before, "usage kept by the reload");
        assert!(try_conn(p.addr, BOB, None).await.is_some(), "bob added");

        // The open connection goes on and ends at the same total.
        let (moved, ended) = pump(&mut c, 16 * 1024, 1_000_000).await;
        assert!(ended && moved < 150_000, "ended {ended} after {moved}");
        let used = p.used("alice");
        assert!(
            (300_000..300_000 + 64 * 1024).contains(&used),
            "used {used}"
        );
        assert!(try_conn(p.addr, ALICE, None).await.is_none(), "over quota");
        p.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_mode_reports_but_does_not_refuse() {
    bounded(60, async {
        let dc = echo_dc().await;
        let st = tempfile::tempdir().unwrap();
        let users = user("alice", ALICE, "max_connections = 1");
        let text = config_text(
            dc.local_addr(),
            st.path(),
            "",
            "users_mode = \"monitor\"",
            &users,
        );
        let p = Harness::start(&text, None).await;
        let mut a = try_conn(p.addr, ALICE, None).await.expect("1st");
        let mut b = try_conn(p.addr, ALICE, None)
            .await
            .expect("2nd relays in monitor mode");
        assert!(echo_ok(&mut a).await && echo_ok(&mut b).await);
        assert!(p.hits.count(PolicyReason::UserConnections, false) >= 1);
        assert_eq!(p.hits.count(PolicyReason::UserConnections, true), 0);
        p.stop().await;
    })
    .await;
}
