//! `mtgate doctor` run as a real process against healthy and broken setups,
//! all on loopback: fake DCs (`mtgate-testkit`), a local TLS mask site with its
//! own certificate and `Date:` header, listeners on `127.0.0.1:0`. Every DC
//! (1..5, 203) and the mask host are overridden in every config, so nothing
//! outside this machine is ever contacted; the FakeTLS domain is `localhost`
//! (resolved from /etc/hosts).

use mtgate_testkit::{FakeDc, FakeDcMode};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_mtgate");
const DOMAIN: &str = "localhost";

/// An HTTP date for Unix time `t` (IMF-fixdate).
fn http_date(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MON: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    const DAY: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} GMT",
        DAY[days.rem_euclid(7) as usize],
        MON[(m - 1) as usize],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A TLS site on loopback with a self-signed certificate for `localhost`; it
/// answers any request with `200` and a `Date:` that is `skew` seconds off.
struct Site {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Site {
    async fn start(dir: &Path, skew: i64) -> (Site, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![DOMAIN.to_string()]).expect("cert");
        let pem = dir.join("mask-ca.pem");
        std::fs::write(&pem, cert.cert.pem()).expect("write pem");
        let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let idle = Duration::from_secs(5);
                    let Ok(Ok(mut tls)) = tokio::time::timeout(idle, acceptor.accept(sock)).await
                    else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if let Ok(Ok(n)) = tokio::time::timeout(idle, tls.read(&mut buf)).await {
                        if n > 0 {
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\nDate: {}\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
                                http_date(now() + skew)
                            );
                            let _ = tls.write_all(reply.as_bytes()).await;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        (Site { addr, task }, pem)
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A listener that accepts, reads and never answers (not a DC).
async fn silent_listener() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    (addr, task)
}

/// A loopback port with nothing listening on it.
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

/// One doctor setup: its config pieces, written to a file per run.
struct Setup {
    dir: tempfile::TempDir,
    listen: String,
    mask_host: String,
    max_connections: usize,
    /// DC number → addresses; every one of 1..5 and 203 must be set.
    dcs: Vec<(u16, Vec<SocketAddr>)>,
    /// Appended after `[dcs]` (whole tables).
    extra: String,
}

impl Setup {
    fn new(dc: SocketAddr, mask: SocketAddr) -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("tempdir"),
            listen: "127.0.0.1:0".into(),
            mask_host: mask.to_string(),
            max_connections: 100,
            dcs: [1, 2, 3, 4, 5, 203]
                .iter()
                .map(|n| (*n, vec![dc]))
                .collect(),
            extra: String::new(),
        }
    }

    fn set_dc(&mut self, n: u16, addrs: Vec<SocketAddr>) {
        for e in &mut self.dcs {
            if e.0 == n {
                e.1 = addrs.clone();
            }
        }
    }

    fn write(&self) -> PathBuf {
        let dcs: String = self
            .dcs
            .iter()
            .map(|(n, a)| {
                let l: Vec<String> = a.iter().map(|a| format!("\"{a}\"")).collect();
                format!("{n} = [{}]\n", l.join(", "))
            })
            .collect();
        assert_eq!(self.dcs.len(), 6, "every default DC is overridden");
        let text = format!(
            "[server]\nlisten = [\"{}\"]\npublic_host = \"127.0.0.1\"\nmax_connections = {}\nstate_dir = \"{}\"\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\n\n\
             [tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"{}\"\n\n[dcs]\n{dcs}{}",
            self.listen,
            self.max_connections,
            self.dir.path().join("state").display(),
            self.mask_host,
            self.extra,
        );
        let p = self.dir.path().join("mtgate.toml");
        std::fs::write(&p, text).expect("write config");
        p
    }
}

struct Outcome {
    code: Option<i32>,
    stdout: String,
    took: Duration,
}

impl Outcome {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {}", self.stdout))
    }
}

/// Runs `mtgate doctor` with `args` (through `sh` with `ulimit -n` when `nofile` is set).
async fn doctor(args: &[&str], nofile: Option<u32>) -> Outcome {
    let mut cmd = match nofile {
        Some(n) => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c")
                .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                .arg(BIN);
            c
        }
        None => tokio::process::Command::new(BIN),
    };
    cmd.arg("doctor").args(args).kill_on_drop(true);
    let started = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("doctor finishes")
        .expect("spawn mtgate");
    Outcome {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        took: started.elapsed(),
    }
}

async fn doctor_on(setup: &Setup, pem: Option<&Path>, extra: &[&str]) -> Outcome {
    let cfg = setup.write();
    let mut args: Vec<String> = vec![
        "--config".into(),
        cfg.display().to_string(),
        "--json".into(),
    ];
    if !extra.contains(&"--timeout") {
        args.extend(["--timeout".into(), "2s".into()]);
    }
    if let Some(p) = pem {
        args.push("--mask-ca".into());
        args.push(p.display().to_string());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    doctor(&refs, None).await
}

/// The checks whose name starts with `prefix`.
fn checks<'a>(j: &'a Value, prefix: &str) -> Vec<&'a Value> {
    j["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["name"].as_str().is_some_and(|n| n.starts_with(prefix)))
        .collect()
}

fn one<'a>(j: &'a Value, name: &str) -> &'a Value {
    let v = checks(j, name);
    assert_eq!(v.len(), 1, "one check named {name}: {j:#}");
    v[0]
}

fn status(c: &Value) -> &str {
    c["status"].as_str().unwrap_or("?")
}

fn fix(c: &Value) -> &str {
    c["fix"].as_str().unwrap_or("")
}

#[tokio::test]
async fn healthy_setup_passes_every_check() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    let dc2 = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    setup.set_dc(2, vec![dc.local_addr(), dc2.local_addr()]);
    let cfg = setup.write();
    let cfg_s = cfg.display().to_string();
    let pem_s = pem.display().to_string();

    // Text report.
    let out = doctor(
        &["--config", &cfg_s, "--mask-ca", &pem_s, "--timeout", "3s"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.trim_start().starts_with("fix:"))
        .collect();
    for name in [
        "config",
        "bind 127.0.0.1:0",
        "fd limit",
        "state dir",
        "dc 1 ",
        "dc 2 ",
        "dc 3 ",
        "dc 4 ",
        "dc 5 ",
        "dc 203 ",
        "mask host",
        "mask certificate",
        "mask profile",
        "mask dns",
        "clock",
    ] {
        assert!(
            rows.iter().any(|r| r[7..].starts_with(name)),
            "a row for {name}: {}",
            out.stdout
        );
    }
    for r in &rows {
        assert!(r.starts_with("OK "), "every check OK: {r}\n{}", out.stdout);
    }
    assert!(!out.stdout.contains("fix:"), "{}", out.stdout);
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);
    assert!(
        out.stdout.contains("TLS 1.3 with SNI localhost"),
        "{}",
        out.stdout
    );
    // Both bind rows (client listener and admin).
    assert_eq!(rows.iter().filter(|r| r.contains("bind ")).count(), 2);
    // DC 2 has two addresses: two rows.
    assert_eq!(rows.iter().filter(|r| r.contains("dc 2 ")).count(), 2);

    // JSON report, same verdicts.
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let j = out.json();
    assert_eq!(j["status"], "ok", "{j:#}");
    assert_eq!(j["fail"], 0);
    assert_eq!(j["warn"], 0);
    assert!(one(&j, "mask certificate")["detail"]
        .as_str()
        .unwrap()
        .contains("expires"));
    assert!(one(&j, "clock")["detail"]
        .as_str()
        .unwrap()
        .contains("Date:"));
    // Every DC connection carried a valid header and got its resPQ.
    assert!(dc.stats().res_pq >= 6 && dc2.stats().res_pq >= 1);
    assert_eq!(dc.stats().rejected + dc2.stats().rejected, 0);
}

#[tokio::test]
async fn dc_on_a_closed_port_fails_with_a_fix() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    let closed = closed_port().await;
    setup.set_dc(2, vec![closed]);
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, &format!("dc 2 {closed}"));
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(
        c["detail"].as_str().unwrap().contains("TCP connect"),
        "{c:#}"
    );
    assert!(fix(c).contains("set [dcs] 2"), "{c:#}");
    for n in [1, 3, 4, 5, 203] {
        assert_eq!(status(checks(&j, &format!("dc {n} "))[0]), "ok", "{j:#}");
    }
    assert_eq!(j["fail"], 1, "{j:#}");
}

#[tokio::test]
async fn one_dead_address_of_a_working_dc_is_a_warning() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    let closed = closed_port().await;
    setup.set_dc(4, vec![dc.local_addr(), closed]);
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(0), "warnings do not fail: {}", out.stdout);
    let j = out.json();
    assert_eq!(j["status"], "warn");
    let c = one(&j, &format!("dc 4 {closed}"));
    assert_eq!(status(c), "warn", "{c:#}");
    assert!(c["detail"]
        .as_str()
        .unwrap()
        .contains("another address of DC 4 works"));
    assert_eq!(status(one(&j, &format!("dc 4 {}", dc.local_addr()))), "ok");
}

#[tokio::test]
async fn dc_that_never_answers_times_out() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let (silent, _task) = silent_listener().await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    setup.set_dc(3, vec![silent]);
    setup.set_dc(5, vec![silent]);
    let out = doctor_on(&setup, Some(&pem), &["--timeout", "1s"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.took < Duration::from_secs(10),
        "bounded by the per-check timeout, in parallel: {:?}",
        out.took
    );
    let j = out.json();
    for n in [3, 5] {
        let c = one(&j, &format!("dc {n} {silent}"));
        assert_eq!(status(c), "fail", "{c:#}");
        assert!(
            c["detail"]
                .as_str()
                .unwrap()
                .contains("no resPQ within the timeout"),
            "{c:#}"
        );
        assert!(
            fix(c).contains("does not answer the MTProto handshake"),
            "{c:#}"
        );
    }
    assert_eq!(status(checks(&j, "dc 1 ")[0]), "ok");
}

#[tokio::test]
async fn mask_host_down_fails_and_the_clock_falls_back_to_the_dcs() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let setup = Setup::new(dc.local_addr(), closed_port().await);
    let out = doctor_on(&setup, None, &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, "mask host");
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(fix(c).contains("tls.mask_host"), "{c:#}");
    assert!(checks(&j, "mask certificate").is_empty());
    // The profile cannot be learned either: a warning with its fix.
    let p = one(&j, "mask profile");
    assert_eq!(status(p), "warn", "{p:#}");
    assert!(
        p["detail"]
            .as_str()
            .unwrap()
            .contains("retries with back-off"),
        "{p:#}"
    );
    assert!(fix(p).contains("tls.mask_host"), "{p:#}");
    let clock = one(&j, "clock");
    assert_eq!(status(clock), "ok", "{clock:#}");
    assert!(clock["detail"].as_str().unwrap().contains("DCs' clocks"));
    assert_eq!(j["fail"], 1, "only the mask host fails: {j:#}");
}

#[tokio::test]
async fn listen_port_in_use_fails() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    setup.listen = addr.to_string();
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, &format!("bind {addr}"));
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(
        fix(c).contains(&format!("another process listens on {addr}")),
        "{c:#}"
    );
    assert!(fix(c).contains("change server.listen"), "{c:#}");
    assert_eq!(j["fail"], 1, "{j:#}");
    drop(busy);
}

#[tokio::test]
async fn invalid_config_fails_naming_the_key() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let mut setup = Setup::new(dc.local_addr(), closed_port().await);
    setup.max_connections = 0;
    let cfg = setup.write();
    let cfg_s = cfg.display().to_string();
    let out = doctor(&["--config", &cfg_s], None).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(out.stdout.starts_with("STATUS"), "{}", out.stdout);
    let row = out.stdout.lines().nth(1).unwrap();
    assert!(row.starts_with("FAIL   config"), "{}", out.stdout);
    assert!(row.contains("server.max_connections"), "{}", out.stdout);
    assert!(
        out.stdout.contains("fix: fix `server.max_connections`"),
        "{}",
        out.stdout
    );
    assert_eq!(dc.stats().accepted, 0, "nothing probed without a config");

    // A file that does not exist.
    let missing = setup.dir.path().join("nope.toml").display().to_string();
    let out = doctor(&["--config", &missing, "--json"], None).await;
    assert_eq!(out.code, Some(1));
    let j = out.json();
    let c = one(&j, "config");
    assert_eq!(status(c), "fail");
    assert!(fix(c).contains("exists and is readable"), "{c:#}");
}

#[tokio::test]
async fn untrusted_certificate_and_foreign_dns_are_warnings() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, _pem) = Site::start(dir.path(), 0).await;
    let setup = Setup::new(dc.local_addr(), site.addr);
    // No --mask-ca: the self-signed certificate does not verify; and a public IP
    // that `localhost` does not resolve to.
    let out = doctor_on(&setup, None, &["--public-ip", "192.0.2.7"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let j = out.json();
    assert_eq!(j["status"], "warn", "{j:#}");
    let cert = one(&j, "mask certificate");
    assert_eq!(status(cert), "warn", "{cert:#}");
    assert!(fix(cert).contains("--mask-ca"), "{cert:#}");
    let dns = one(&j, "mask dns");
    assert_eq!(status(dns), "warn", "{dns:#}");
    assert_eq!(
        fix(dns),
        "point DNS of localhost at 192.0.2.7 so the SNI matches this server"
    );
    assert_eq!(status(one(&j, "mask host")), "ok");
}

#[tokio::test]
async fn clock_outside_the_faketls_window_fails() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    // The site's clock is an hour behind ours: our clock looks an hour ahead.
    let (site, pem) = Site::start(dir.path(), -3600).await;
    let setup = Setup::new(dc.local_addr(), site.addr);
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, "clock");
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("ahead of"), "{c:#}");
    assert!(fix(c).contains("NTP"), "{c:#}");

    // 30 s off: inside the window, but worth a warning.
    let (site, pem) = Site::start(dir.path(), 30).await;
    let setup = Setup::new(dc.local_addr(), site.addr);
    let out = doctor_on(&setup, Some(&pem), &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(status(one(&out.json(), "clock")), "warn");
}

#[tokio::test]
async fn low_fd_limit_fails() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    setup.max_connections = 1000;
    let cfg = setup.write();
    let (cfg_s, pem_s) = (cfg.display().to_string(), pem.display().to_string());
    let out = doctor(
        &["--config", &cfg_s, "--mask-ca", &pem_s, "--json"],
        Some(256),
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, "fd limit");
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("soft 256"), "{c:#}");
    assert!(fix(c).contains("LimitNOFILE=2064"), "{c:#}");
    assert!(fix(c).contains("ulimit -n 2064"), "{c:#}");
    assert_eq!(j["fail"], 1, "{j:#}");
}

/// The two example reports of docs/operations.md ("Doctor"), checked like
/// any test; `-- --nocapture` prints them for the docs:
/// `cargo test -p mtgate --test doctor example_reports -- --nocapture`.
#[tokio::test]
async fn example_reports_for_the_docs() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dc2 = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    setup.set_dc(2, vec![dc.local_addr(), dc2.local_addr()]);
    let (cfg, pem_s) = (setup.write(), pem.display().to_string());
    let cfg_s = cfg.display().to_string();
    let out = doctor(&["--config", &cfg_s, "--mask-ca", &pem_s], None).await;
    println!(
        "$ mtgate doctor --config mtgate.toml --mask-ca mask-ca.pem\n{}",
        out.stdout
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    setup.listen = busy.local_addr().unwrap().to_string();
    setup.set_dc(2, vec![closed_port().await]);
    let cfg_s = setup.write().display().to_string();
    let out = doctor(&["--config", &cfg_s, "--timeout", "2s"], None).await;
    println!(
        "$ mtgate doctor --config mtgate.toml --timeout 2s\n{}(exit {:?})",
        out.stdout, out.code
    );
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert!(
        out.stdout.contains("another process listens on"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("FAIL"), "{}", out.stdout);
    drop(busy);
}

#[tokio::test]
async fn me_mode_checks_the_files_and_each_middle_proxy() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (site, pem) = Site::start(dir.path(), 0).await;
    let (silent, _task) = silent_listener().await;
    let closed = closed_port().await;
    let secret = dir.path().join("proxy-secret");
    std::fs::write(&secret, [0x5au8; 128]).unwrap();
    let conf = dir.path().join("proxy-multi.conf");
    std::fs::write(
        &conf,
        format!("default 2;\nproxy_for 1 {closed};\nproxy_for 2 {silent};\n"),
    )
    .unwrap();
    let mut setup = Setup::new(dc.local_addr(), site.addr);
    setup.extra = format!(
        "\n[me]\nenabled = true\nproxy_secret_file = \"{}\"\nproxy_config_file = \"{}\"\n",
        secret.display(),
        conf.display()
    );
    let out = doctor_on(&setup, Some(&pem), &["--timeout", "1s"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let files = one(&j, "me files");
    assert_eq!(status(files), "ok", "{files:#}");
    assert!(files["detail"]
        .as_str()
        .unwrap()
        .contains("2 middle proxy address(es)"));
    for a in [closed, silent] {
        let c = one(&j, &format!("me {a}"));
        assert_eq!(status(c), "fail", "no middle proxy works: {c:#}");
        assert!(fix(c).contains("nat_ip"), "{c:#}");
    }
    assert!(
        !out.stdout.contains("5a5a5a5a"),
        "the proxy-secret is never printed"
    );
    assert!(
        !setup.dir.path().join("state").join("me").exists(),
        "the doctor starts no ME pool and saves no copies"
    );

    // The files missing: a config error names the key; a missing file is a failed check.
    std::fs::remove_file(&secret).unwrap();
    let out = doctor_on(&setup, Some(&pem), &["--timeout", "1s"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let files = one(&j, "me files");
    assert_eq!(status(files), "fail", "{files:#}");
    assert!(fix(files).contains("getProxySecret"), "{files:#}");
}
