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
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const BIN: &str = env!("CARGO_BIN_EXE_mtgate");
const DOMAIN: &str = "localhost";

mod common;
use common::{MaskSite, SiteOptions};

/// The usual bench: a fake DC for every DC, a TLS mask site for `localhost`
/// whose clock is `skew` seconds off, its certificate as a CA file, and a
/// [`Setup`] pointing at both.
struct Lab {
    dc: FakeDc,
    _site: MaskSite,
    pem: PathBuf,
    setup: Setup,
}

impl Lab {
    async fn start(skew: i64) -> Lab {
        let dc = fake_dc().await;
        let site = MaskSite::start_with(SiteOptions {
            at: "127.0.0.1:0".parse().unwrap(),
            idle: Duration::from_secs(5),
            domain: DOMAIN,
            date_skew: Some(skew),
        })
        .await;
        let setup = Setup::new(dc.local_addr(), site.addr);
        let pem = setup.dir.path().join("mask-ca.pem");
        std::fs::write(&pem, &site.cert_pem).expect("write pem");
        Lab {
            dc,
            _site: site,
            pem,
            setup,
        }
    }

    /// `mtgate doctor --json` on the setup, trusting the site's certificate.
    async fn doctor(&self, extra: &[&str]) -> Outcome {
        doctor_on(&self.setup, Some(&self.pem), extra).await
    }
}

async fn fake_dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap()
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
    let mut lab = Lab::start(0).await;
    let dc2 = fake_dc().await;
    lab.setup
        .set_dc(2, vec![lab.dc.local_addr(), dc2.local_addr()]);
    let cfg = lab.setup.write();
    let cfg_s = cfg.display().to_string();
    let pem_s = lab.pem.display().to_string();

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
    let out = lab.doctor(&[]).await;
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
    assert!(lab.dc.stats().res_pq >= 6 && dc2.stats().res_pq >= 1);
    assert_eq!(lab.dc.stats().rejected + dc2.stats().rejected, 0);
}

#[tokio::test]
async fn dc_on_a_closed_port_fails_with_a_fix() {
    let mut lab = Lab::start(0).await;
    let closed = closed_port().await;
    lab.setup.set_dc(2, vec![closed]);
    let out = lab.doctor(&[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, &format!("dc 2 {closed}"));
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("connect: "), "{c:#}");
    assert!(fix(c).contains("set [dcs] 2"), "{c:#}");
    for n in [1, 3, 4, 5, 203] {
        assert_eq!(status(checks(&j, &format!("dc {n} "))[0]), "ok", "{j:#}");
    }
    assert_eq!(j["fail"], 1, "{j:#}");
}

#[tokio::test]
async fn one_dead_address_of_a_working_dc_is_a_warning() {
    let mut lab = Lab::start(0).await;
    let closed = closed_port().await;
    lab.setup.set_dc(4, vec![lab.dc.local_addr(), closed]);
    let out = lab.doctor(&[]).await;
    assert_eq!(out.code, Some(0), "warnings do not fail: {}", out.stdout);
    let j = out.json();
    assert_eq!(j["status"], "warn");
    let c = one(&j, &format!("dc 4 {closed}"));
    assert_eq!(status(c), "warn", "{c:#}");
    assert!(c["detail"]
        .as_str()
        .unwrap()
        .contains("another target of DC 4 works"));
    assert_eq!(
        status(one(&j, &format!("dc 4 {}", lab.dc.local_addr()))),
        "ok"
    );
}

#[tokio::test]
async fn dc_that_never_answers_times_out() {
    let mut lab = Lab::start(0).await;
    let (silent, _task) = silent_listener().await;
    lab.setup.set_dc(3, vec![silent]);
    lab.setup.set_dc(5, vec![silent]);
    let out = lab.doctor(&["--timeout", "1s"]).await;
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
    let dc = fake_dc().await;
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
    let mut lab = Lab::start(0).await;
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap();
    lab.setup.listen = addr.to_string();
    let out = lab.doctor(&[]).await;
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
    let dc = fake_dc().await;
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
    let lab = Lab::start(0).await;
    // No --mask-ca: the self-signed certificate does not verify; and a public IP
    // that `localhost` does not resolve to.
    let out = doctor_on(&lab.setup, None, &["--public-ip", "192.0.2.7"]).await;
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
    // The site's clock is an hour behind ours: our clock looks an hour ahead.
    let out = Lab::start(-3600).await.doctor(&[]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let c = one(&j, "clock");
    assert_eq!(status(c), "fail", "{c:#}");
    assert!(c["detail"].as_str().unwrap().contains("ahead of"), "{c:#}");
    assert!(fix(c).contains("NTP"), "{c:#}");

    // 30 s off: inside the window, but worth a warning.
    let out = Lab::start(30).await.doctor(&[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert_eq!(status(one(&out.json(), "clock")), "warn");
}

#[tokio::test]
async fn low_fd_limit_fails() {
    let mut lab = Lab::start(0).await;
    lab.setup.max_connections = 1000;
    let cfg = lab.setup.write();
    let (cfg_s, pem_s) = (cfg.display().to_string(), lab.pem.display().to_string());
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
    let mut lab = Lab::start(0).await;
    let dc2 = fake_dc().await;
    lab.setup
        .set_dc(2, vec![lab.dc.local_addr(), dc2.local_addr()]);
    let (cfg, pem_s) = (lab.setup.write(), lab.pem.display().to_string());
    let cfg_s = cfg.display().to_string();
    let out = doctor(&["--config", &cfg_s, "--mask-ca", &pem_s], None).await;
    println!(
        "$ mtgate doctor --config mtgate.toml --mask-ca mask-ca.pem\n{}",
        out.stdout
    );
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    assert!(out.stdout.contains("healthy"), "{}", out.stdout);
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    lab.setup.listen = busy.local_addr().unwrap().to_string();
    lab.setup.set_dc(2, vec![closed_port().await]);
    let cfg_s = lab.setup.write().display().to_string();
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
    let mut lab = Lab::start(0).await;
    let dir = tempfile::tempdir().unwrap();
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
    lab.setup.extra = format!(
        "\n[me]\nenabled = true\nproxy_secret_file = \"{}\"\nproxy_config_file = \"{}\"\n",
        secret.display(),
        conf.display()
    );
    let out = lab.doctor(&["--timeout", "1s"]).await;
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
        !lab.setup.dir.path().join("state").join("me").exists(),
        "the doctor starts no ME pool and saves no copies"
    );

    // The files missing: a config error names the key; a missing file is a failed check.
    std::fs::remove_file(&secret).unwrap();
    let out = lab.doctor(&["--timeout", "1s"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    let j = out.json();
    let files = one(&j, "me files");
    assert_eq!(status(files), "fail", "{files:#}");
    assert!(fix(files).contains("getProxySecret"), "{files:#}");
}
