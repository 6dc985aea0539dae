//! The admin listener over real sockets: mtgate in-process with the fake DC,
//! clients of every mode, garbage probes, then `/metrics` scraped over HTTP
//! and checked for values that moved, a strict text-format parse, the health
//! endpoints through the lifecycle (incl. draining), `[admin]` config errors,
//! and the Grafana dashboard's queries against a live scrape.

mod common;

use common::{MaskSite, KEY_HEX};
use mtgate::admin::{AdminServer, AdminState, Metrics, MetricsSink};
use mtgate::config::{Config, Overrides};
use mtgate::events::{Counters, Telemetry};
use mtgate::runtime::Runtime;
use mtgate::server::Server;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::conf::key_from_hex as key;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOB_HEX: &str = "ffeeddccbbaa99887766554433221100";

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

/// mtgate in-process plus its admin server on 127.0.0.1:0.
struct Stack {
    proxy: SocketAddr,
    admin: AdminServer,
    state: Arc<AdminState>,
    server: Option<Server>,
}

impl Stack {
    async fn start(dc: SocketAddr, mask: SocketAddr) -> Stack {
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nhandshake_timeout = \"3s\"\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\
             [tls]\ndomains = [\"mask.test\"]\nmask_host = \"{mask}\"\nlearn_profile = false\n\
             [dcs]\n1 = [\"{dc}\"]\n2 = [\"{dc}\"]\n3 = [\"{dc}\"]\n4 = [\"{dc}\"]\n5 = [\"{dc}\"]\n203 = [\"{dc}\"]\n7 = [\"127.0.0.1:1\"]\n\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"classic\", \"dd\", \"ee\"]\n\
             [users.bob]\nsecret = \"{BOB_HEX}\"\nmodes = [\"dd\"]\n"
        );
        let cfg = Config::from_toml(&text, &Overrides::default()).expect("config");
        let users = cfg.users.clone();
        let metrics =
            Arc::new(Metrics::new(users.iter().map(|u| u.name.as_str())).with_dc_table(&cfg.dcs));
        let state = AdminState::new(metrics.clone());
        let admin = AdminServer::start(cfg.admin_listen.expect("admin on"), state.clone())
            .await
            .expect("admin");
        let tel = Telemetry::new(vec![
            Arc::new(Counters::default()),
            Arc::new(MetricsSink(metrics)),
        ]);
        let runtime = Arc::new(Runtime::build(cfg, users, tel).expect("runtime"));
        let server = Server::start(runtime).await.expect("start");
        state.health.mark_started();
        Stack {
            proxy: server.local_addrs[0],
            admin,
            state,
            server: Some(server),
        }
    }

    async fn scrape(&self) -> Scrape {
        let (status, body) = get(self.admin.local_addr, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        check_text_format(&body);
        Scrape::parse(&body)
    }

    /// Scrapes until `f` holds (metrics are updated as events arrive).
    async fn scrape_until(&self, what: &str, f: impl Fn(&Scrape) -> bool) -> Scrape {
        for _ in 0..100 {
            let s = self.scrape().await;
            if f(&s) {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "timed out waiting for {what}:\n{}",
            self.scrape().await.text
        );
    }
}

/// One GET over a fresh connection; returns the status code and body.
async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path).await
}

async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("admin answers in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("http head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, body.to_owned())
}

/// One sample's labels and value.
type Sample = (BTreeMap<String, String>, f64);

/// A parsed scrape: sample name → its samples.
struct Scrape {
    text: String,
    samples: BTreeMap<String, Vec<Sample>>,
}

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut samples: BTreeMap<String, Vec<_>> = BTreeMap::new();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, labels, value) = parse_sample(line).expect("valid sample");
            samples.entry(name).or_default().push((labels, value));
        }
        Scrape {
            text: text.to_owned(),
            samples,
        }
    }

    /// Sum of the samples of `name` whose labels include every pair of `want`.
    fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|(l, _)| {
                        want.iter()
                            .all(|(k, w)| l.get(*k).map(String::as_str) == Some(*w))
                    })
                    .map(|(_, x)| x)
                    .sum()
            })
            .unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.samples.contains_key(name)
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    matches!(c.next(), Some(ch) if ch.is_ascii_alphabetic() || ch == '_' || ch == ':')
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == ':')
}

/// `name{k="v",...} value` → parts, or why not.
fn parse_sample(line: &str) -> Result<(String, BTreeMap<String, String>, f64), String> {
    let (series, value) = line.rsplit_once(' ').ok_or("no value")?;
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().map_err(|_| format!("bad value `{v}`"))?,
    };
    let (name, labels) = match series.split_once('{') {
        None => (series, BTreeMap::new()),
        Some((n, rest)) => {
            let body = rest.strip_suffix('}').ok_or("unclosed labels")?;
            let mut labels = BTreeMap::new();
            let mut rest = body;
            while !rest.is_empty() {
                let (k, after) = rest.split_once("=\"").ok_or("bad label")?;
                if !is_name(k) {
                    return Err(format!("bad label name `{k}`"));
                }
                let end = after.find('"').ok_or("unterminated label value")?;
                labels.insert(k.to_owned(), after[..end].to_owned());
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
            (n, labels)
        }
    };
    if !is_name(name) {
        return Err(format!("bad metric name `{name}`"));
    }
    Ok((name.to_owned(), labels, value))
}

/// Every line is `# HELP|TYPE|UNIT name ...`, a sample of a declared family,
/// or the final `# EOF`; every sample belongs to a `# TYPE`d family.
fn check_text_format(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "exposition must end with # EOF"
    );
    let mut families = BTreeSet::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut w = rest.splitn(3, ' ');
            let kind = w.next().unwrap_or("");
            let name = w.next().unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT"].contains(&kind) && is_name(name),
                "bad comment line: {line}"
            );
            if kind == "TYPE" {
                let t = w.next().unwrap_or("");
                assert!(
                    ["counter", "gauge", "histogram", "info", "unknown"].contains(&t),
                    "bad type: {line}"
                );
                families.insert(name.to_owned());
            }
            continue;
        }
        let (name, labels, _) =
            parse_sample(line).unwrap_or_else(|e| panic!("bad sample line `{line}`: {e}"));
        let family = ["_total", "_bucket", "_sum", "_count", "_info", "_created"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(*f)))
            .unwrap_or(&name);
        assert!(families.contains(family), "sample without # TYPE: {line}");
        assert!(!labels.contains_key("ip") && !labels.contains_key("peer"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_with_traffic_in_every_mode() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let mask = MaskSite::start(Duration::from_secs(2)).await;
    let st = Stack::start(dc.local_addr(), mask.addr).await;
    let s0 = st.scrape().await;
    assert_eq!(s0.sum("mtgate_connections_active", &[]), 0.0);
    assert_eq!(s0.sum("mtgate_handshakes_accepted_total", &[]), 0.0);
    assert!(s0.has("mtgate_build_info") && s0.has("mtgate_process_open_fds"));
    assert!(s0.has("mtgate_process_resident_memory_bytes"));
    assert!(s0.has("mtgate_pool_hits_total") && s0.has("mtgate_pool_buffers_in_use"));

    // Every mode for alice, dd for bob; all held open at once, then closed.
    const N: usize = 20_000;
    let payload: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
    let mut clients = Vec::new();
    let mut conns = modes()
        .into_iter()
        .map(|m| (KEY_HEX, m))
        .collect::<Vec<_>>();
    conns.push((BOB_HEX, ClientMode::Secure));
    for (k, mode) in conns {
        let mut c = ObfsClient::connect(st.proxy, &key(k), mode.clone(), 2)
            .await
            .expect("connect");
        c.send_raw(&payload).await.expect("send");
        let back = c
            .recv_exact(N)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e:#}"));
        assert_eq!(back, payload, "{mode:?}");
        clients.push(c);
    }
    let s1 = st
        .scrape_until("5 active", |s| {
            s.sum("mtgate_connections_active", &[]) == 5.0
        })
        .await;
    // The 5 connections are open but idle: they hold no relay buffer (other
    // tests of this binary may relay meanwhile, so wait for the gauge).
    st.scrape_until("no buffer in use", |s| {
        s.sum("mtgate_pool_buffers_in_use", &[]) == 0.0
    })
    .await;
    // Both buffer size classes served the 20 000-byte echoes: a burst starts
    // in a small buffer and moves to a large one once it fills the small one.
    for class in ["small", "large"] {
        let taken = s1.sum("mtgate_pool_hits_total", &[("class", class)])
            + s1.sum("mtgate_pool_misses_total", &[("class", class)]);
        assert!(taken > 0.0, "no {class} buffer was taken");
        assert!(s1.sum("mtgate_pool_buffer_size_bytes", &[("class", class)]) >= 4096.0);
    }
    let acc = |s: &Scrape, mode, user| {
        s.sum(
            "mtgate_handshakes_accepted_total",
            &[("mode", mode), ("user", user)],
        )
    };
    assert_eq!(acc(&s1, "classic", "alice"), 2.0);
    assert_eq!(acc(&s1, "dd", "alice"), 1.0);
    assert_eq!(acc(&s1, "ee", "alice"), 1.0);
    assert_eq!(acc(&s1, "dd", "bob"), 1.0);
    assert!(s1.sum("mtgate_upstream_connect_seconds_count", &[("dc", "2")]) >= 5.0);

    for mut c in clients {
        c.shutdown().await.ok();
        assert!(c.closed_within(Duration::from_secs(5)).await);
    }
    let s2 = st
        .scrape_until("0 active", |s| {
            s.sum("mtgate_connections_active", &[]) == 0.0
        })
        .await;
    let bytes = |user, dir| s2.sum("mtgate_bytes_total", &[("user", user), ("direction", dir)]);
    assert!(bytes("alice", "up") >= (4 * N) as f64, "{}", s2.text);
    assert!(bytes("alice", "down") >= (4 * N) as f64, "{}", s2.text);
    assert!(bytes("bob", "up") >= N as f64 && bytes("bob", "down") >= N as f64);
    assert_eq!(
        s2.sum("mtgate_connections_total", &[("user", "alice")]),
        4.0
    );
    assert_eq!(
        s2.sum(
            "mtgate_connections_total",
            &[("user", "bob"), ("mode", "dd")]
        ),
        1.0
    );

    // Garbage: rejected by reason, fronted to the mask site, counted with no user.
    let rejected0 = s2.sum("mtgate_handshakes_rejected_total", &[]);
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(st.proxy)
            .await
            .expect("connect");
        s.write_all(&[0x42u8; 300]).await.expect("write");
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    let s3 = st
        .scrape_until("3 rejected", |s| {
            s.sum("mtgate_handshakes_rejected_total", &[]) >= rejected0 + 3.0
                && s.sum("mtgate_connections_active", &[]) == 0.0
        })
        .await;
    let by_reason = &s3.samples["mtgate_handshakes_rejected_total"];
    assert_eq!(
        by_reason.len(),
        mtgate_proto::RejectReason::ALL.len(),
        "every reason is exported"
    );
    assert!(s3.sum("mtgate_handshakes_fronted_total", &[]) >= 3.0);
    assert!(
        s3.sum(
            "mtgate_connections_total",
            &[("user", "none"), ("mode", "none")]
        ) >= 3.0
    );
    // Every fronting is counted by its cause, not only rejected handshakes: a
    // client that half-closes before the handshake decided, and one that
    // stays silent past the handshake deadline (3 s here).
    let eof0 = s3.sum(
        "mtgate_handshakes_fronted_total",
        &[("reason", "handshake_eof")],
    );
    let late0 = s3.sum(
        "mtgate_handshakes_fronted_total",
        &[("reason", "handshake_timeout")],
    );
    let mut half = tokio::net::TcpStream::connect(st.proxy)
        .await
        .expect("connect");
    half.write_all(&[0x16, 0x03]).await.expect("write");
    half.shutdown().await.expect("half-close");
    let mut silent = tokio::net::TcpStream::connect(st.proxy)
        .await
        .expect("connect");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut sink)).await;
    let _ = tokio::time::timeout(Duration::from_secs(6), silent.read_to_end(&mut sink)).await;
    st.scrape_until("fronted by cause", |s| {
        s.sum(
            "mtgate_handshakes_fronted_total",
            &[("reason", "handshake_eof")],
        ) > eof0
            && s.sum(
                "mtgate_handshakes_fronted_total",
                &[("reason", "handshake_timeout")],
            ) > late0
    })
    .await;
    drop(dc);
    stop(st).await;
}

async fn stop(mut st: Stack) {
    st.state.health.mark_draining();
    if let Some(s) = st.server.take() {
        s.shutdown(Duration::from_millis(200)).await;
    }
    st.admin.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_endpoints_follow_the_lifecycle() {
    let state = AdminState::new(Arc::new(Metrics::new(["alice"])));
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .expect("admin");
    let a = admin.local_addr;
    let codes = || async {
        (
            get(a, "/health/live").await.0,
            get(a, "/health/startup").await.0,
            get(a, "/health/ready").await.0,
        )
    };
    assert_eq!(
        codes().await,
        (200, 503, 503),
        "before the listeners are bound"
    );
    state.health.mark_started();
    assert_eq!(codes().await, (200, 200, 200), "serving");
    state.health.mark_draining();
    assert_eq!(codes().await, (200, 200, 503), "draining");
    assert_eq!(get(a, "/health/ready?verbose=1").await.1, "draining\n");
    assert_eq!(get(a, "/nope").await.0, 404);
    assert_eq!(request(a, "POST", "/metrics").await.0, 405);
    // HEAD is answered like GET, without a body.
    assert_eq!(request(a, "HEAD", "/health/live").await.0, 200);
    admin.stop();
}

/// 200 idle connections (more than the admin listener keeps, in all and
/// per address) and a few half-sent requests hold the port; liveness and
/// readiness still answer within a second, every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_idle_connections_hold_the_admin_port() {
    let state = AdminState::new(Arc::new(Metrics::new(["alice"])));
    state.health.mark_started();
    let admin = AdminServer::start("127.0.0.1:0".parse().unwrap(), state.clone())
        .await
        .expect("admin");
    let a = admin.local_addr;
    let mut idle = Vec::new();
    for i in 0..200u32 {
        let mut s = tokio::net::TcpStream::connect(a).await.expect("connect");
        if i % 10 == 0 {
            // A request head that never ends.
            s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n")
                .await
                .expect("w");
        }
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for round in 0..5 {
        for path in ["/health/live", "/health/ready"] {
            let t0 = std::time::Instant::now();
            let (code, _) = tokio::time::timeout(Duration::from_secs(1), get(a, path))
                .await
                .unwrap_or_else(|_| panic!("{path} unanswered within 1 s (round {round})"));
            assert_eq!(code, 200, "{path}");
            assert!(t0.elapsed() < Duration::from_secs(1));
        }
        // More idle connections keep arriving.
        for _ in 0..20 {
            idle.push(tokio::net::TcpStream::connect(a).await.expect("connect"));
        }
    }
    admin.stop();
}

#[test]
fn admin_config_keys() {
    let ov = Overrides::default();
    let c = Config::from_toml("", &ov).expect("defaults");
    assert_eq!(c.admin_listen, Some("127.0.0.1:9090".parse().unwrap()));
    let c = Config::from_toml("[admin]\nenabled = false\n", &ov).expect("off");
    assert_eq!(c.admin_listen, None);
    let c = Config::from_toml("[admin]\nlisten = \"[::1]:9100\"\n", &ov).expect("v6");
    assert_eq!(c.admin_listen, Some("[::1]:9100".parse().unwrap()));
    for (text, key) in [
        ("[admin]\nlisten = \"nope\"\n", "admin.listen"),
        (
            "[server]\nlisten = [\"[::]:9090\"]\n[admin]\nlisten = \"127.0.0.1:9090\"\n",
            "admin.listen",
        ),
        ("[admin]\nport = 1\n", "admin"),
    ] {
        let e = Config::from_toml(text, &ov).expect_err(text).to_string();
        assert!(e.starts_with(key), "{text}: {e}");
    }
}

/// Metric names a PromQL expression refers to (`mtgate_…` identifiers).
fn promql_metrics(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(p) = expr[i..].find("mtgate_") {
        let start = i + p;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.push(expr[start..end].to_owned());
        }
        i = end;
    }
    out
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                match (k.as_str(), x) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(x, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_exprs(x, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_dashboard_queries_only_exported_metrics() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/mtgate.json"
    );
    let text = std::fs::read_to_string(path).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 8, "dashboard has queries");

    // A live scrape after some traffic, so every labelled family has samples.
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let mask = MaskSite::start(Duration::from_secs(2)).await;
    let st = Stack::start(dc.local_addr(), mask.addr).await;
    let mut c = ObfsClient::connect(st.proxy, &key(KEY_HEX), ClientMode::Secure, 2)
        .await
        .expect("connect");
    c.send_raw(b"hello").await.expect("send");
    c.recv_exact(5).await.expect("echo");
    c.shutdown().await.ok();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    // DC 7 points at a closed port: an upstream failure.
    let mut f = ObfsClient::connect(st.proxy, &key(KEY_HEX), ClientMode::Secure, 7)
        .await
        .expect("connect");
    f.send_raw(b"x").await.ok();
    f.flush().await.ok();
    assert!(f.closed_within(Duration::from_secs(5)).await);
    let s = st
        .scrape_until("closed connections and a failure", |s| {
            s.sum("mtgate_connections_total", &[]) >= 2.0
                && s.sum("mtgate_upstream_connect_failures_total", &[("dc", "7")]) >= 1.0
        })
        .await;
    let mut missing = BTreeSet::new();
    for e in &exprs {
        for m in promql_metrics(e) {
            if !s.has(&m) {
                missing.insert(m);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "dashboard queries unknown metrics: {missing:?}"
    );
    stop(st).await;
}
