//! Glue for the ME end-to-end tests: the fake middle-end oracle
//! (`shared/oracles/fake_me/fake_me.py`, run from a Python venv) as a child
//! process, its JSON-lines log and control socket, the oracle's Python client,
//! and mtgate in ME mode in-process.
//!
//! The venv: `python3 -m venv .venv-me && .venv-me/bin/pip install -r
//! ../shared/oracles/fake_me/requirements.txt` at the repository root, or
//! `MTGATE_ME_PYTHON` naming a Python with `cryptography`; the oracle folder
//! can be moved with `MTGATE_FAKE_ME_DIR`. Without them the tests print SKIP
//! and pass, unless `MTGATE_ME_REQUIRED=1`.
#![allow(dead_code)]

mod client;
pub use client::*;

use mtgate::config::{Config, Overrides};
use mtgate::events::{Counters, Telemetry};
use mtgate::runtime::Runtime;
use mtgate::server::Server;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The users' key (alice) and a second user's (bob).
pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
pub const BOB_KEY_HEX: &str = "ffeeddccbbaa99887766554433221100";
pub const AD_TAG: &str = "0123456789abcdeffedcba9876543210";
pub const BOB_AD_TAG: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";
pub const DOMAIN: &str = "mask.test";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn oracle_dir() -> PathBuf {
    std::env::var_os("MTGATE_FAKE_ME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/oracles/fake_me"))
}

fn python() -> PathBuf {
    std::env::var_os("MTGATE_ME_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv-me/bin/python"))
}

/// Whether the oracle can run here; prints why not (or panics if required).
/// With `MTGATE_TEST_LOG=debug` (a tracing filter) the proxy's logs are shown.
pub fn available() -> bool {
    if let Ok(filter) = std::env::var("MTGATE_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
    let ok = python().exists() && oracle_dir().join("fake_me.py").exists();
    if !ok {
        let msg = format!(
            "fake ME oracle unavailable (python {}, oracle {})",
            python().display(),
            oracle_dir().display()
        );
        assert!(std::env::var_os("MTGATE_ME_REQUIRED").is_none(), "{msg}");
        eprintln!("SKIP: {msg}");
    }
    ok
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    free_port_at("127.0.0.1:0")
}

/// A free port on `addr`'s interface (bound and released).
pub fn free_port_at(addr: &str) -> u16 {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running fake ME.
pub struct FakeMe {
    child: Child,
    extra: Vec<String>,
    pub listen: Vec<SocketAddr>,
    pub control: SocketAddr,
    pub log: PathBuf,
    pub secret_file: PathBuf,
    pub dir: tempfile::TempDir,
}

impl FakeMe {
    /// Starts the oracle on `n` loopback addresses with `extra` options and
    /// waits until its control socket answers.
    pub async fn start(n: usize, extra: &[&str]) -> FakeMe {
        let listen = (0..n)
            .map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())))
            .collect();
        Self::start_at(listen, extra).await
    }

    /// Starts the oracle on the given loopback addresses (IPv4 or IPv6).
    pub async fn start_at(listen: Vec<SocketAddr>, extra: &[&str]) -> FakeMe {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("proxy-secret");
        let mut secret = [0u8; 128];
        mtgate_crypto::fill_random(&mut secret);
        std::fs::write(&secret_file, secret).expect("secret");
        let log = dir.path().join("me.jsonl");
        let control = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let child = spawn_oracle(&listen, &secret_file, &log, control, &extra);
        let me = FakeMe {
            child,
            extra,
            listen,
            control,
            log,
            secret_file,
            dir,
        };
        me.wait_control().await;
        me
    }

    async fn wait_control(&self) {
        for _ in 0..200 {
            if TcpStream::connect(self.control).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("fake ME did not start");
    }

    /// Kills the oracle process (its sockets close as the kernel sees fit: the
    /// RPC links are reset or get EOF, like a crashed middle-end).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the oracle again on the same addresses, secret and log (which it
    /// appends to), after [`FakeMe::kill`].
    pub async fn restart(&mut self) {
        self.kill().await;
        self.child = spawn_oracle(
            &self.listen,
            &self.secret_file,
            &self.log,
            self.control,
            &self.extra,
        );
        self.wait_control().await;
    }

    /// One control request (a JSON object); returns the JSON answer line.
    pub async fn control(&self, req: &str) -> String {
        let f = async {
            let s = TcpStream::connect(self.control).await.ok()?;
            let (r, mut w) = s.into_split();
            w.write_all(format!("{req}\n").as_bytes()).await.ok()?;
            let mut line = String::new();
            BufReader::new(r).read_line(&mut line).await.ok()?;
            Some(line)
        };
        tokio::time::timeout(Duration::from_secs(5), f)
            .await
            .ok()
            .flatten()
            .expect("fake ME control answer")
    }

    /// Log lines of event `ev`.
    pub fn events(&self, ev: &str) -> Vec<String> {
        let pat = format!("\"ev\": \"{ev}\"");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&pat))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until at least `n` events `ev` were logged.
    pub async fn wait_events(&self, ev: &str, n: usize, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.events(ev).len() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A `proxy-multi.conf` sending DC ±1 to the first address, ±2 (and the
    /// default) to the last.
    pub fn multi_conf(&self) -> String {
        let a = self.listen[0];
        let b = self.listen[self.listen.len() - 1];
        format!("default 2;\nproxy_for 1 {a};\nproxy_for -1 {a};\nproxy_for 2 {b};\nproxy_for -2 {b};\n")
    }
}

fn spawn_oracle(
    listen: &[SocketAddr],
    secret_file: &Path,
    log: &Path,
    control: SocketAddr,
    extra: &[String],
) -> Child {
    let mut cmd = Command::new(python());
    cmd.arg(oracle_dir().join("fake_me.py"));
    for a in listen {
        cmd.arg("--listen").arg(a.to_string());
    }
    cmd.arg("--secret-file")
        .arg(secret_file)
        .arg("--log")
        .arg(log)
        .arg("--control")
        .arg(control.to_string())
        .arg("--quiet")
        .arg("--duration")
        .arg("120")
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn fake_me.py")
}

/// Oracle options matching [`SlowPath`]'s addresses.
pub const SLOW_PATH_KEYS: [&str; 4] = [
    "--key-client-ip",
    "127.0.0.1",
    "--key-server-ip",
    "127.0.0.3",
];

/// A TCP relay between mtgate and the fake ME that holds every chunk for
/// `delay_ms` before passing it on (a slow middle-end or path), or, while
/// `stall` is set when a connection arrives, passes nothing at all on it.
///
/// The ME keys cover both ends' addresses and ports, so the relay keeps them
/// consistent: it listens on 127.0.0.3 at the ME's own port and connects out
/// from 127.0.0.2 at mtgate's source port; start the oracle with
/// `--key-client-ip 127.0.0.1 --key-server-ip 127.0.0.3` ([`SLOW_PATH_KEYS`]).
pub struct SlowPath {
    pub addr: SocketAddr,
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    pub stall: Arc<std::sync::atomic::AtomicBool>,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    /// Connections whose mtgate side has closed.
    pub closed_by_proxy: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowPath {
    /// Starts an oracle (with [`SLOW_PATH_KEYS`]) and a path in front of it.
    ///
    /// The path's port on 127.0.0.3 is taken first and the oracle is started
    /// on the same port of 127.0.0.1, checked free just before: binding
    /// 127.0.0.3 at a port chosen for 127.0.0.1 failed in CI when some other
    /// socket held it there.
    pub async fn start_with_oracle(delay: Duration, stall: bool) -> (FakeMe, SlowPath) {
        for _ in 0..50 {
            let l = std::net::TcpListener::bind("127.0.0.3:0").expect("bind 127.0.0.3");
            let port = l.local_addr().expect("addr").port();
            let upstream = SocketAddr::from(([127, 0, 0, 1], port));
            if std::net::TcpListener::bind(upstream).is_err() {
                continue;
            }
            l.set_nonblocking(true).expect("nonblocking");
            let l = tokio::net::TcpListener::from_std(l).expect("listener");
            let fake = FakeMe::start_at(vec![upstream], &SLOW_PATH_KEYS).await;
            let path = SlowPath::run(l, upstream, delay, stall);
            return (fake, path);
        }
        panic!("no port free on both 127.0.0.1 and 127.0.0.3");
    }

    /// Relays from `l` (on 127.0.0.3) to `upstream` (the oracle on 127.0.0.1).
    fn run(
        l: tokio::net::TcpListener,
        upstream: SocketAddr,
        delay: Duration,
        stall: bool,
    ) -> SlowPath {
        use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
        let addr = l.local_addr().expect("addr");
        let delay_ms = Arc::new(AtomicU64::new(delay.as_millis() as u64));
        let stall = Arc::new(AtomicBool::new(stall));
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed_by_proxy = Arc::new(AtomicUsize::new(0));
        let (d, st, acc, cl) = (
            delay_ms.clone(),
            stall.clone(),
            accepted.clone(),
            closed_by_proxy.clone(),
        );
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((down, from)) = l.accept().await {
                acc.fetch_add(1, Relaxed);
                let (d, cl, stalled) = (d.clone(), cl.clone(), st.load(Relaxed));
                conns.spawn(async move {
                    let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    let src = SocketAddr::from(([127, 0, 0, 2], from.port()));
                    if sock.bind(src).is_err() {
                        return;
                    }
                    let Ok(up) = sock.connect(upstream).await else {
                        return;
                    };
                    let (mut dr, dw) = down.into_split();
                    let (ur, uw) = up.into_split();
                    if stalled {
                        // Read and drop what mtgate sends until it gives up.
                        let mut buf = [0u8; 4096];
                        while tokio::io::AsyncReadExt::read(&mut dr, &mut buf)
                            .await
                            .is_ok_and(|n| n > 0)
                        {}
                        cl.fetch_add(1, Relaxed);
                        drop((dw, ur, uw));
                        return;
                    }
                    let to_me = pump(dr, uw, d.clone());
                    let from_me = pump(ur, dw, d);
                    tokio::select! {
                        _ = to_me => { cl.fetch_add(1, Relaxed); }
                        _ = from_me => {}
                    }
                });
            }
        });
        SlowPath {
            addr,
            delay_ms,
            stall,
            accepted,
            closed_by_proxy,
            task,
        }
    }
}

/// Copies `r` to `w`, holding each chunk for the current delay.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let ms = delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A field of a JSON log line: a string value without quotes, or a bare number.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\": ");
    let at = line.find(&pat)? + pat.len();
    let rest = &line[at..];
    if let Some(s) = rest.strip_prefix('"') {
        return s.split('"').next();
    }
    rest.split([',', '}']).next().map(str::trim)
}

/// mtgate in ME mode, in-process.
pub struct MeProxy {
    pub addr: SocketAddr,
    /// The link port (`[link.exit]` in the tables), if any.
    pub link: Option<SocketAddr>,
    /// The proxy-multi.conf it reads (rewrite it to test reloading).
    pub conf: PathBuf,
    pub runtime: Arc<Runtime>,
    pub counters: Arc<Counters>,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

/// `[me]` keys: the test defaults, with `overrides` replacing or adding keys.
pub fn me_section(fake: &FakeMe, conf_path: &Path, overrides: &[(&str, &str)]) -> String {
    let mut keys: Vec<(String, String)> = vec![
        ("ad_tag".into(), format!("\"{AD_TAG}\"")),
        (
            "proxy_secret_file".into(),
            format!("\"{}\"", fake.secret_file.display()),
        ),
        (
            if fake.listen[0].is_ipv6() {
                "proxy_config_v6_file".into()
            } else {
                "proxy_config_file".into()
            },
            format!("\"{}\"", conf_path.display()),
        ),
        ("connections_per_addr".into(), "1".into()),
        ("crc32c".into(), "true".into()),
        ("fallback_direct".into(), "false".into()),
        ("handshake_timeout".into(), "\"2s\"".into()),
        ("backoff_initial".into(), "\"100ms\"".into()),
        ("backoff_max".into(), "\"1s\"".into()),
    ];
    for (k, v) in overrides {
        keys.retain(|(kk, _)| kk != k);
        if !v.is_empty() {
            keys.push(((*k).into(), (*v).into()));
        }
    }
    let mut s = String::from("[me]\n");
    for (k, v) in keys {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

impl MeProxy {
    /// Starts mtgate with users alice (global tag) and bob (own tag), modes
    /// classic/dd/ee, DCs at `direct_dc` (for the fallback), ME from `fake`.
    pub async fn start(
        fake: &FakeMe,
        overrides: &[(&str, &str)],
        direct_dc: SocketAddr,
    ) -> MeProxy {
        Self::start_with(fake, &fake.multi_conf(), overrides, direct_dc, "127.0.0.1").await
    }

    /// [`MeProxy::start`] with this `proxy-multi.conf` text and `server.public_host`.
    pub async fn start_with(
        fake: &FakeMe,
        multi_conf: &str,
        overrides: &[(&str, &str)],
        direct_dc: SocketAddr,
        public_host: &str,
    ) -> MeProxy {
        Self::start_full(fake, multi_conf, overrides, direct_dc, public_host, "").await
    }

    /// [`MeProxy::start_with`] with whole `tables` appended to the config.
    pub async fn start_full(
        fake: &FakeMe,
        multi_conf: &str,
        overrides: &[(&str, &str)],
        direct_dc: SocketAddr,
        public_host: &str,
        tables: &str,
    ) -> MeProxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("proxy-multi.conf");
        std::fs::write(&conf, multi_conf).expect("conf");
        let dcs = mtgate_testkit::conf::dcs_table(&[direct_dc]);
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"{public_host}\"\nstate_dir = \"{}\"\n\
             default_modes = [\"classic\", \"dd\", \"ee\"]\nhandshake_timeout = \"3s\"\nidle_timeout = \"20s\"\n\
             [tls]\ndomains = [\"{DOMAIN}\"]\nfronting = false\n{dcs}\
             [users.alice]\nsecret = \"{KEY_HEX}\"\n[users.bob]\nsecret = \"{BOB_KEY_HEX}\"\nad_tag = \"{BOB_AD_TAG}\"\n{}{tables}",
            dir.path().join("state").display(),
            me_section(fake, &conf, overrides)
        );
        let cfg = Config::from_toml(&text, &Overrides::default()).expect("config");
        let counters = Arc::new(Counters::default());
        let users = cfg.users.clone();
        let runtime = Arc::new(
            Runtime::build(cfg, users, Telemetry::new(vec![counters.clone()])).expect("runtime"),
        );
        let server = Server::start(runtime.clone()).await.expect("start");
        MeProxy {
            addr: server.local_addrs[0],
            link: server.link_addr,
            conf,
            runtime,
            counters,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Waits until `n` ME links are ready.
    pub async fn wait_ready(&self, n: usize) -> bool {
        match &self.runtime.me {
            Some(me) => me.wait_ready(n, Duration::from_secs(10)).await,
            None => false,
        }
    }

    pub fn ready(&self) -> usize {
        self.runtime
            .me
            .as_ref()
            .map_or(0, |m| m.ready_connections())
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(200)).await;
        }
    }
}

/// Runs the oracle's `fake_client.py` against `proxy` with `args`; returns
/// (success, stdout). Bounded by `limit`.
pub async fn fake_client(proxy: SocketAddr, args: &[&str], limit: Duration) -> (bool, String) {
    let mut cmd = Command::new(python());
    cmd.arg(oracle_dir().join("fake_client.py"))
        .arg("--proxy")
        .arg(proxy.to_string())
        .arg("--secret")
        .arg(KEY_HEX)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(Ok(out)) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Ok(Err(e)) => (false, format!("cannot run fake_client.py: {e}")),
        Err(_) => (false, "fake_client.py timed out".into()),
    }
}
