//! Shared pieces of mtgate's end-to-end tests: an in-process proxy and a real
//! TLS "mask site" on loopback (rustls, its own certificate).
#![allow(dead_code)]

pub mod admin_http;
pub mod binary;
pub mod clients;
pub mod link;
pub mod nginx;
pub mod prober;
pub mod redis;
pub mod tls;
pub mod wss;

use mtgate::config::{Config, Overrides};
use mtgate::events::{Counters, Telemetry};
use mtgate::runtime::Runtime;
use mtgate::server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff";
pub const DOMAIN: &str = "mask.test";

/// Alice's key ([`KEY_HEX`]).
pub fn key() -> mtgate_crypto::Key16 {
    mtgate_testkit::conf::key_from_hex(KEY_HEX)
}

/// Whether alice's client in `mode` toward DC 2, with `opts` (source
/// address, a preamble, …), gets the fake DC's resPQ through `proxy`.
pub async fn resolves_with(
    proxy: SocketAddr,
    mode: mtgate_testkit::client::ClientMode,
    opts: mtgate_testkit::client::ClientOptions,
) -> bool {
    use mtgate_testkit::client::ObfsClient;
    let limit = opts.io_timeout.min(Duration::from_secs(5));
    match ObfsClient::connect_with(proxy, &key(), mode, 2, opts).await {
        Ok(mut c) => matches!(
            tokio::time::timeout(limit, c.req_pq_multi()).await,
            Ok(Ok(_))
        ),
        Err(_) => false,
    }
}

/// [`resolves_with`] for a `dd` client with default options.
pub async fn resolves(proxy: SocketAddr) -> bool {
    resolves_with(
        proxy,
        mtgate_testkit::client::ClientMode::Secure,
        Default::default(),
    )
    .await
}

pub struct Proxy {
    pub addr: SocketAddr,
    /// The `[websocket]` listeners, if any.
    pub ws: Vec<SocketAddr>,
    /// The link port (`[link.exit]`), if any.
    pub link: Option<SocketAddr>,
    /// The state directory (kept until the proxy is dropped).
    pub state: tempfile::TempDir,
    pub counters: Arc<Counters>,
    pub runtime: Arc<Runtime>,
    server: Option<Server>,
}

impl Proxy {
    /// Starts mtgate in-process on 127.0.0.1:0 with `toml` (users etc.) appended;
    /// every DC points at a closed loopback port (tests never reach Telegram).
    pub async fn start(toml: &str) -> Proxy {
        Self::start_with_dc(toml, "127.0.0.1:1".parse().expect("addr")).await
    }

    /// As [`Proxy::start`], with DCs 1..5 and 203 at `dc`.
    pub async fn start_with_dc(toml: &str, dc: SocketAddr) -> Proxy {
        Self::start_full("127.0.0.1:0", "", toml, &[dc]).await
    }

    /// Full control: listen address, extra `[server]` lines, the rest, and the
    /// addresses of DCs 1..5 and 203.
    pub async fn start_full(
        listen: &str,
        server_extra: &str,
        toml: &str,
        dc: &[SocketAddr],
    ) -> Proxy {
        Self::start_clocked(listen, server_extra, toml, dc, None).await
    }

    /// [`Proxy::start_full`] with the policy's clock given (e.g. a `ManualClock`).
    pub async fn start_clocked(
        listen: &str,
        server_extra: &str,
        toml: &str,
        dc: &[SocketAddr],
        clock: Option<mtgate::policy::clock::SharedClock>,
    ) -> Proxy {
        // A test that writes its own `[dcs]` gets no generated one.
        let dcs = if toml.contains("[dcs]") {
            String::new()
        } else {
            mtgate_testkit::conf::dcs_table(dc)
        };
        let hs = if server_extra.contains("handshake_timeout") {
            ""
        } else {
            "handshake_timeout = \"3s\"\n"
        };
        // A state directory of its own unless the test names one: policy state
        // (usage, blocks) must never leak between tests.
        let state = tempfile::tempdir().expect("state dir");
        let sd = if server_extra.contains("state_dir") {
            String::new()
        } else {
            format!("state_dir = \"{}\"\n", state.path().display())
        };
        let text = format!(
            "[server]\nlisten = [\"{listen}\"]\npublic_host = \"127.0.0.1\"\n{hs}{sd}{server_extra}\n{dcs}{toml}"
        );
        let cfg = Config::from_toml(&text, &Overrides::default()).expect("config");
        let counters = Arc::new(Counters::default());
        let tel = Telemetry::new(vec![counters.clone()]);
        let users = cfg.users.clone();
        let clock = clock.unwrap_or_else(mtgate::policy::clock::SystemClock::shared);
        let runtime = Arc::new(Runtime::build_with_clock(cfg, users, tel, clock).expect("runtime"));
        let server = Server::start(runtime.clone()).await.expect("start");
        Proxy {
            state,
            addr: server.local_addrs[0],
            ws: server.ws_addrs.clone(),
            link: server.link_addr,
            counters,
            runtime,
            server: Some(server),
        }
    }

    pub async fn stop(mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown(Duration::from_millis(200)).await;
        }
    }
}

/// A TLS site on loopback: completes TLS 1.3 handshakes with a self-signed
/// certificate for `mask.test`, answers any request with a fixed HTTP reply and
/// closes; a client that does not finish its handshake within `idle` is dropped.
pub struct MaskSite {
    pub addr: SocketAddr,
    /// The site's self-signed certificate (PEM), to trust it as a CA.
    pub cert_pem: String,
    task: tokio::task::JoinHandle<()>,
}

/// What a [`MaskSite`] is: where, for which name, how its clock reads.
pub struct SiteOptions<'a> {
    pub at: SocketAddr,
    pub idle: Duration,
    /// The certificate's name.
    pub domain: &'a str,
    /// `Some(skew)`: answers carry a `Date:` `skew` seconds off this clock.
    pub date_skew: Option<i64>,
}

impl MaskSite {
    pub async fn start(idle: Duration) -> MaskSite {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), idle).await
    }

    /// [`MaskSite::start`] on a given address.
    pub async fn start_on(at: SocketAddr, idle: Duration) -> MaskSite {
        Self::start_with(SiteOptions {
            at,
            idle,
            domain: DOMAIN,
            date_skew: None,
        })
        .await
    }

    /// A site as `o` says.
    pub async fn start_with(o: SiteOptions<'_>) -> MaskSite {
        let idle = o.idle;
        let cert = rcgen::generate_simple_self_signed(vec![o.domain.to_string()]).expect("cert");
        let cert_pem = cert.cert.pem();
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
        let listener = TcpListener::bind(o.at).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let skew = o.date_skew;
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(Ok(mut tls)) = tokio::time::timeout(idle, acceptor.accept(sock)).await
                    else {
                        return;
                    };
                    let mut buf = [0u8; 4096];
                    if let Ok(Ok(n)) = tokio::time::timeout(idle, tls.read(&mut buf)).await {
                        if n > 0 {
                            let date = skew.map(http_date).unwrap_or_default();
                            let reply = format!(
                                "HTTP/1.1 200 OK\r\n{date}content-length: 5\r\nconnection: close\r\n\r\nhello"
                            );
                            let _ = tls.write_all(reply.as_bytes()).await;
                        }
                    }
                    let _ = tls.shutdown().await;
                });
            }
        });
        MaskSite {
            addr,
            cert_pem,
            task,
        }
    }
}

/// A `Date:` header line `skew` seconds off this machine's clock.
fn http_date(skew: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let t = chrono::DateTime::from_timestamp(now + skew, 0).expect("date in range");
    format!("Date: {}\r\n", t.format("%a, %d %b %Y %H:%M:%S GMT"))
}

impl Drop for MaskSite {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a connection ended, as a prober sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Fin,
    Reset,
    /// Still open when the prober gave up.
    Open,
}

/// What a prober saw: every byte, how and when the connection ended.
#[derive(Debug)]
pub struct Seen {
    pub bytes: Vec<u8>,
    pub end: End,
    pub after: Duration,
}

/// Connects, sends `chunks` (with `gap` between them), optionally half-closes,
/// then reads until the peer closes or `limit` passes.
pub async fn probe(
    addr: SocketAddr,
    chunks: &[Vec<u8>],
    gap: Duration,
    half_close: bool,
    limit: Duration,
) -> Seen {
    probe_from(None, addr, chunks, gap, half_close, limit).await
}

/// [`probe`] from a chosen loopback source address (`None`: the kernel's).
pub async fn probe_from(
    source: Option<std::net::IpAddr>,
    addr: SocketAddr,
    chunks: &[Vec<u8>],
    gap: Duration,
    half_close: bool,
    limit: Duration,
) -> Seen {
    let start = tokio::time::Instant::now();
    let mut s = match source {
        None => tokio::net::TcpStream::connect(addr).await.expect("connect"),
        Some(ip) => {
            let sock = match ip {
                std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
                std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
            }
            .expect("socket");
            sock.bind(SocketAddr::new(ip, 0)).expect("bind source");
            sock.connect(addr).await.expect("connect")
        }
    };
    for (i, c) in chunks.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(gap).await;
        }
        if s.write_all(c).await.is_err() {
            break;
        }
    }
    if half_close {
        let _ = s.shutdown().await;
    }
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        match tokio::time::timeout_at(start + limit, s.read(&mut buf)).await {
            Err(_) => break End::Open,
            Ok(Ok(0)) => break End::Fin,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Ok(Err(_)) => break End::Reset,
        }
    };
    Seen {
        bytes,
        end,
        after: start.elapsed(),
    }
}

/// Record shapes equal up to `slack` bytes per record length (signature
/// encodings make a site's flight vary by a byte or two between connections).
pub fn shapes_match(a: &[(u8, usize)], b: &[(u8, usize)], slack: usize) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.0 == y.0 && x.1.abs_diff(y.1) <= slack)
}

/// The TLS record layout of a byte stream: (type, length) per record; the
/// Sends a valid FakeTLS `hello` (from `source`) and checks mtgate itself
/// answers it: a ServerHello record, then ChangeCipherSpec.
pub async fn served_by_mtgate(source: Option<std::net::IpAddr>, proxy: SocketAddr, hello: &[u8]) {
    let first = probe_from(
        source,
        proxy,
        &[hello.to_vec()],
        Duration::ZERO,
        false,
        Duration::from_millis(300),
    )
    .await;
    assert_eq!(
        record_shape(&first.bytes)[..2],
        [(0x16, 122), (0x14, 1)],
        "the first use is served by mtgate"
    );
}

/// contents of handshakes are random per connection, their shape is not.
pub fn record_shape(b: &[u8]) -> Vec<(u8, usize)> {
    let mut v = Vec::new();
    let mut pos = 0;
    while pos + 5 <= b.len() {
        let len = u16::from_be_bytes([b[pos + 3], b[pos + 4]]) as usize;
        v.push((b[pos], len));
        pos += 5 + len;
    }
    if pos != b.len() {
        v.push((0xff, b.len() - pos.min(b.len())));
    }
    v
}

pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

/// A running `mtgate run` process (killed on drop) and its first client address.
pub struct MtgateProcess {
    pub child: std::process::Child,
    pub addr: SocketAddr,
}

impl Drop for MtgateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl MtgateProcess {
    /// Starts `mtgate run --no-qr --config PATH` with `HOME` = `home` and
    /// waits for its `LISTENING` line; stdout keeps being drained. `stderr`:
    /// where its logs go.
    pub fn spawn(
        path: &std::path::Path,
        home: &std::path::Path,
        stderr: std::process::Stdio,
    ) -> Self {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mtgate"))
            .args(["run", "--no-qr", "--config"])
            .arg(path)
            .env("HOME", home)
            .env_remove("MTGATE_LOG")
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn mtgate");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let addr = loop {
            match lines.next() {
                Some(Ok(l)) if l.starts_with("LISTENING ") => {
                    break l["LISTENING ".len()..].parse().expect("addr")
                }
                Some(Ok(_)) => continue,
                _ => panic!("mtgate exited before listening"),
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Self { child, addr }
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let st = std::process::Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(st.success(), "kill -{name}");
    }

    /// Waits up to `limit` for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// One `GET`, a fresh connection each time (as a health checker does):
/// the status and the body, or what went wrong.
pub async fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let run = async {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let req = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        s.write_all(req.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no http head in {} bytes", raw.len()))?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| format!("bad status line `{head}`"))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .map_err(|_| "timed out".to_string())?
}

/// The value of an unlabelled sample `name` in a Prometheus text exposition.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Resident memory of process `pid`, in bytes (Linux).
pub fn rss_of(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A port that was free a moment ago.
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
