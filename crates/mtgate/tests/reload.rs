//! Hot reload (issue 6) over real sockets: a valid change applies to new
//! connections while established ones keep relaying; a removed user's or a
//! rotated secret's connections are drained after the grace time; an invalid
//! file is refused and the old config keeps serving. The process-level
//! triggers (SIGHUP, file change, `POST /reload`) run the real binary.

mod common;

use common::MtgateProcess;
use mtgate::admin::{Metrics, MetricsSink};
use mtgate::config::{Config, Overrides};
use mtgate::events::Telemetry;
use mtgate::reload::Reloader;
use mtgate::runtime::{Live, Runtime};
use mtgate::server::Server;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::conf::key_from_hex as key;
use mtgate_testkit::conf::{dcs_table, users_tables, TLS_NO_FRONTING};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ALICE: &str = "00112233445566778899aabbccddeeff";
const ALICE2: &str = "0f0e0d0c0b0a09080706050403020100";
const BOB: &str = "ffeeddccbbaa99887766554433221100";

fn mode() -> ClientMode {
    ClientMode::Classic(ProtoTag::Intermediate)
}

/// A config with DCs at `dc`, no fronting, and `users` (`name = secret`).
fn config_text(listen: &str, dc: SocketAddr, extra_server: &str, users: &[(&str, &str)]) -> String {
    format!(
        "[server]\nlisten = [\"{listen}\"]\npublic_host = \"127.0.0.1\"\nhandshake_timeout = \"2s\"\n{extra_server}\n\
         {TLS_NO_FRONTING}{}{}",
        dcs_table(&[dc]),
        users_tables(users, &["classic", "dd"])
    )
}

async fn mtproto_dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("dc")
}

/// A proxy serving alice only, with `extra_server` in `[server]`, and one
/// of her connections that has done a round trip.
async fn start_with_alice(dc: &FakeDc, extra_server: &str) -> (InProcess, ObfsClient) {
    let text = config_text(
        "127.0.0.1:0",
        dc.local_addr(),
        extra_server,
        &[("alice", ALICE)],
    );
    let p = start(&text).await;
    let mut c = ObfsClient::connect(p.addr, &key(ALICE), mode(), 2)
        .await
        .expect("connect");
    assert!(round_trip(&mut c).await);
    (p, c)
}

struct InProcess {
    addr: SocketAddr,
    reloader: Arc<Reloader>,
    metrics: Arc<Metrics>,
    path: PathBuf,
    _dir: tempfile::TempDir,
    server: Server,
}

async fn start(text: &str) -> InProcess {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mtgate.toml");
    std::fs::write(&path, text).expect("write config");
    let cfg = Config::load(&path, &Overrides::default()).expect("config");
    let metrics = Arc::new(Metrics::new(cfg.users.iter().map(|u| u.name.as_str())));
    let tel = Telemetry::new(vec![Arc::new(MetricsSink(metrics.clone()))]);
    let users = cfg.users.clone();
    let live = Live::new(Arc::new(Runtime::build(cfg, users, tel).expect("runtime")));
    let server = Server::start_live(live.clone()).await.expect("start");
    let reloader = Reloader::new(
        Some(path.clone()),
        Overrides::default(),
        live,
        Some(metrics.clone()),
    );
    InProcess {
        addr: server.local_addrs[0],
        reloader,
        metrics,
        path,
        _dir: dir,
        server,
    }
}

/// One verified round trip through the proxy to the fake DC.
async fn round_trip(c: &mut ObfsClient) -> bool {
    matches!(
        tokio::time::timeout(Duration::from_secs(3), c.req_pq_multi()).await,
        Ok(Ok(_))
    )
}

async fn connect_ok(addr: SocketAddr, k: &str) -> bool {
    match ObfsClient::connect(addr, &key(k), mode(), 2).await {
        Ok(mut c) => round_trip(&mut c).await,
        Err(_) => false,
    }
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_reload_applies_to_new_connections_and_drains_removed_user() {
    let dc = mtproto_dc().await;
    let grace = "drain_grace = \"1500ms\"\nwatch_config = false";
    let (p, mut old) = start_with_alice(&dc, grace).await;
    assert!(!connect_ok(p.addr, BOB).await, "bob is not configured yet");

    std::fs::write(
        &p.path,
        config_text("127.0.0.1:0", dc.local_addr(), grace, &[("bob", BOB)]),
    )
    .expect("rewrite");
    let summary = p.reloader.reload().expect("valid reload");
    assert_eq!(summary.added, vec!["bob".to_string()]);
    assert_eq!(summary.drained, vec!["alice".to_string()]);

    // New connections see the new users; the established one keeps relaying.
    assert!(connect_ok(p.addr, BOB).await, "bob works after the reload");
    assert!(
        !connect_ok(p.addr, ALICE).await,
        "alice is refused after the reload"
    );
    let mut bob = ObfsClient::connect(p.addr, &key(BOB), mode(), 2)
        .await
        .expect("bob");
    assert!(round_trip(&mut bob).await);
    for _ in 0..3 {
        assert!(
            round_trip(&mut old).await,
            "alice's connection relays during the grace time"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // After the grace time alice's connection is ended; bob's is not.
    assert!(
        old.closed_within(Duration::from_secs(3)).await,
        "alice drained"
    );
    assert!(round_trip(&mut bob).await, "bob's connection is untouched");
    let m = p.metrics.encode().expect("encode");
    assert_eq!(
        metric(&m, "mtgate_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert!(
        m.contains("reason=\"drained\""),
        "the drained connection is counted"
    );
    p.server.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_drains_old_key_only() {
    let dc = mtproto_dc().await;
    let grace = "drain_grace = \"500ms\"\nwatch_config = false";
    let (p, mut old) = start_with_alice(&dc, grace).await;
    std::fs::write(
        &p.path,
        config_text("127.0.0.1:0", dc.local_addr(), grace, &[("alice", ALICE2)]),
    )
    .expect("rewrite");
    let s = p.reloader.reload().expect("reload");
    assert_eq!(s.drained, vec!["alice".to_string()]);
    // The new secret's session starts inside the grace time and must survive it.
    let mut new = ObfsClient::connect(p.addr, &key(ALICE2), mode(), 2)
        .await
        .expect("new key");
    assert!(round_trip(&mut new).await);
    assert!(
        !connect_ok(p.addr, ALICE).await,
        "the old secret is refused"
    );
    assert!(
        old.closed_within(Duration::from_secs(3)).await,
        "old key drained"
    );
    assert!(
        round_trip(&mut new).await,
        "the new key's session survives the drain"
    );
    p.server.shutdown(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_file_is_refused_and_old_config_keeps_serving() {
    let dc = mtproto_dc().await;
    let extra = "watch_config = false";
    let good = config_text("127.0.0.1:0", dc.local_addr(), extra, &[("alice", ALICE)]);
    let p = start(&good).await;
    let mut old = ObfsClient::connect(p.addr, &key(ALICE), mode(), 2)
        .await
        .expect("connect");
    assert!(round_trip(&mut old).await);
    let broken = [
        "[server\nlisten = nonsense".to_string(),
        good.replace("[users.alice]", "[users.alice]\nunknown_key = 1"),
        good.replace(ALICE, "not-a-secret"),
        good.replace("handshake_timeout = \"2s\"", "handshake_timeout = \"0s\""),
    ];
    for (i, text) in broken.iter().enumerate() {
        std::fs::write(&p.path, text).expect("write broken");
        let err = p
            .reloader
            .reload()
            .expect_err("broken file must be refused");
        assert!(!err.to_string().is_empty(), "case {i}");
        assert!(
            connect_ok(p.addr, ALICE).await,
            "case {i}: old config still serves"
        );
        assert!(
            round_trip(&mut old).await,
            "case {i}: established connection unaffected"
        );
    }
    let m = p.metrics.encode().expect("encode");
    assert_eq!(
        metric(&m, "mtgate_config_reloads_total{result=\"error\"}"),
        Some(broken.len() as f64)
    );
    assert_eq!(
        metric(&m, "mtgate_config_last_reload_successful"),
        Some(0.0)
    );
    // Fixing the file applies again.
    std::fs::write(&p.path, &good).expect("write good");
    p.reloader.reload().expect("good again");
    let m = p.metrics.encode().expect("encode");
    assert_eq!(
        metric(&m, "mtgate_config_last_reload_successful"),
        Some(1.0)
    );
    p.server.shutdown(Duration::from_millis(200)).await;
}

// ---- the real binary: SIGHUP, file watching, POST /reload ----

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn wait_until_ok(addr: SocketAddr, k: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if connect_ok(addr, k).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_reloads_on_sighup_file_change_and_admin_request() {
    let dc = mtproto_dc().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mtgate.toml");
    let admin_port = free_port();
    let admin = format!(
        "state_dir = \"{}\"\nwatch_config = false\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\ntoken = \"0123456789abcdef-token\"",
        dir.path().display()
    );
    let write = |users: &[(&str, &str)]| {
        // [admin] must come after [server] keys: put it in the server extra block.
        std::fs::write(
            &path,
            config_text("127.0.0.1:0", dc.local_addr(), &admin, users),
        )
        .expect("write config")
    };
    write(&[("alice", ALICE)]);
    let child = MtgateProcess::spawn(&path, dir.path(), Stdio::null());
    assert!(connect_ok(child.addr, ALICE).await);

    // SIGHUP.
    write(&[("alice", ALICE), ("bob", BOB)]);
    assert!(
        !connect_ok(child.addr, BOB).await,
        "no reload without a trigger"
    );
    child.signal("HUP");
    assert!(
        wait_until_ok(child.addr, BOB, Duration::from_secs(5)).await,
        "SIGHUP reloads"
    );

    // POST /reload: refused without the token, applied with it.
    write(&[("bob", BOB)]);
    let post = |auth: Option<&str>| {
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let req = format!(
            "POST /reload HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin_port)).expect("admin");
        use std::io::{Read, Write};
        s.write_all(req.as_bytes()).expect("send");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    assert!(post(None).starts_with("HTTP/1.1 401"), "no token");
    assert!(post(Some("wrong-token-wrong-token")).starts_with("HTTP/1.1 401"));
    assert!(
        connect_ok(child.addr, ALICE).await,
        "not reloaded by a refused request"
    );
    let ok = post(Some("0123456789abcdef-token"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("drained [alice]"), "{ok}");
    assert!(
        !connect_ok(child.addr, ALICE).await,
        "alice removed by POST /reload"
    );
    // A broken file over the API: 422, old config kept.
    std::fs::write(&path, "[server\n").expect("write");
    let bad = post(Some("0123456789abcdef-token"));
    assert!(bad.starts_with("HTTP/1.1 422"), "{bad}");
    assert!(
        connect_ok(child.addr, BOB).await,
        "still serving after a refused reload"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_reloads_when_the_file_changes() {
    let dc = mtproto_dc().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mtgate.toml");
    let extra = format!(
        "state_dir = \"{}\"\n[admin]\nenabled = false",
        dir.path().display()
    );
    std::fs::write(
        &path,
        config_text("127.0.0.1:0", dc.local_addr(), &extra, &[("alice", ALICE)]),
    )
    .expect("write");
    let child = MtgateProcess::spawn(&path, dir.path(), Stdio::null());
    assert!(connect_ok(child.addr, ALICE).await);
    std::fs::write(
        &path,
        config_text(
            "127.0.0.1:0",
            dc.local_addr(),
            &extra,
            &[("alice", ALICE), ("bob", BOB)],
        ),
    )
    .expect("rewrite");
    assert!(
        wait_until_ok(child.addr, BOB, Duration::from_secs(8)).await,
        "the watcher reloads a changed file"
    );
}
