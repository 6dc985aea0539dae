//! A Telegram-DC look-alike on loopback, for end-to-end tests and benchmarks.
//!
//! [`FakeDc`] accepts obfuscated2 connections exactly as a DC does (PROTOCOL §3.3
//! with *no* secret, §5): the 64-byte header is parsed with
//! [`mtgate_proto::obfs2::parse_dc_side_header`], the tag selects the transport
//! and a bad tag closes the connection. The DC index is recorded (see
//! [`FakeDc::seen`]) but otherwise ignored.
//!
//! Two behaviours ([`FakeDcMode`]):
//!
//! * [`FakeDcMode::Mtproto`]: parses the client's transport frames of
//!   unencrypted MTProto messages and answers `req_pq_multi`/`req_pq` with a
//!   `resPQ` and `req_DH_params` with `server_DH_params_ok`, byte for byte as
//!   tests/realclients/README.md specifies (so Telethon and TDLib get far enough
//!   to prove the path works). Anything else is ignored; the connection stays
//!   open until the client closes it.
//! * [`FakeDcMode::Echo`]: decrypts everything after the header and sends it
//!   back re-encrypted, byte for byte, with no framing (throughput benchmark,
//!   relay tests).
//!
//! Everything a peer sends is untrusted: frames are capped
//! ([`FakeDcConfig::max_frame`], 1 MiB by default), parsers are bounds-checked
//! and a malformed stream only ends its own connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use mtgate_crypto::{fill_random, random_range};
use mtgate_proto::obfs2::{parse_dc_side_header, CipherPair, HEADER_LEN};
use mtgate_proto::transport::{self, Decoded};
use mtgate_proto::ProtoTag;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::mtproto::{
    self, DhParamsOk, ReqDhParams, TlReader, ENCRYPTED_DATA_LEN, FAKE_ANSWER_LEN, FAKE_FINGERPRINT,
    FAKE_P, FAKE_Q,
};

/// What the fake DC does after a valid header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FakeDcMode {
    /// Answer the first two steps of the auth-key exchange.
    #[default]
    Mtproto,
    /// Echo the decrypted stream back, re-encrypted, without framing.
    Echo,
}

/// Settings of a [`FakeDc`]; [`Default`] is `Mtproto`, quiet, 1 MiB frames.
#[derive(Clone, Debug)]
pub struct FakeDcConfig {
    pub mode: FakeDcMode,
    /// Print one line per connection event on stderr (the binary does).
    pub log: bool,
    /// How long a connection may take to send its 64-byte header.
    pub header_timeout: Duration,
    /// Largest client frame accepted in `Mtproto` mode; a longer one closes the connection.
    pub max_frame: usize,
}

impl Default for FakeDcConfig {
    fn default() -> Self {
        Self {
            mode: FakeDcMode::Mtproto,
            log: false,
            header_timeout: Duration::from_secs(30),
            max_frame: 1 << 20,
        }
    }
}

/// Counters of a [`FakeDc`] since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FakeDcStats {
    /// TCP connections accepted.
    pub accepted: u64,
    /// Connections closed for a bad or missing header.
    pub rejected: u64,
    /// `resPQ` answers sent.
    pub res_pq: u64,
    /// `server_DH_params_ok` answers for valid requests (real server_nonce).
    pub dh_ok: u64,
    /// `server_DH_params_ok` answers for invalid requests (zeroed server_nonce).
    pub dh_invalid: u64,
    /// Bytes echoed in `Echo` mode.
    pub echoed_bytes: u64,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Vec<(ProtoTag, i16)>>,
    accepted: AtomicU64,
    rejected: AtomicU64,
    res_pq: AtomicU64,
    dh_ok: AtomicU64,
    dh_invalid: AtomicU64,
    echoed: AtomicU64,
}

impl Shared {
    fn seen(&self) -> std::sync::MutexGuard<'_, Vec<(ProtoTag, i16)>> {
        // A poisoned lock only means a test thread panicked; the data is still fine.
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A running fake DC. Dropping it (or [`FakeDc::stop`]) closes the listener and
/// every connection.
pub struct FakeDc {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FakeDc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeDc")
            .field("addr", &self.addr)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FakeDc {
    /// Binds `addr` (port 0 picks a free one) and serves in `mode` on the current
    /// tokio runtime. Returns once the listener is bound.
    pub async fn start(addr: SocketAddr, mode: FakeDcMode) -> anyhow::Result<Self> {
        Self::start_with(
            addr,
            FakeDcConfig {
                mode,
                ..FakeDcConfig::default()
            },
        )
        .await
    }

    /// [`FakeDc::start`] with every setting.
    pub async fn start_with(addr: SocketAddr, cfg: FakeDcConfig) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("fake DC: binding {addr}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(accept_loop(listener, Arc::new(cfg), shared.clone()));
        Ok(Self {
            addr,
            shared,
            task: Some(task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `(tag, DC index)` of every connection with a valid header, in arrival order.
    pub fn seen(&self) -> Vec<(ProtoTag, i16)> {
        self.shared.seen().clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> FakeDcStats {
        let s = &self.shared;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FakeDcStats {
            accepted: get(&s.accepted),
            rejected: get(&s.rejected),
            res_pq: get(&s.res_pq),
            dh_ok: get(&s.dh_ok),
            dh_invalid: get(&s.dh_invalid),
            echoed_bytes: get(&s.echoed),
        }
    }

    /// Waits until at least `n` valid headers were seen; `false` on timeout.
    pub async fn wait_seen(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.shared.seen().len() >= n {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, closes every connection and waits until that is done.
    pub async fn stop(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for FakeDc {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, cfg: Arc<FakeDcConfig>, shared: Arc<Shared>) {
    // Dropping the JoinSet (when this task is aborted) aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    bump(&shared.accepted, 1);
                    let _ = stream.set_nodelay(true);
                    conns.spawn(serve(stream, peer, cfg.clone(), shared.clone()));
                }
                Err(e) => {
                    if cfg.log {
                        eprintln!("fake-dc: accept failed: {e}");
                    }
                    // E.g. out of file descriptors: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn serve(mut s: TcpStream, peer: SocketAddr, cfg: Arc<FakeDcConfig>, shared: Arc<Shared>) {
    let mut header = [0u8; HEADER_LEN];
    let got = tokio::time::timeout(cfg.header_timeout, s.read_exact(&mut header)).await;
    if !matches!(got, Ok(Ok(_))) {
        bump(&shared.rejected, 1);
        if cfg.log {
            eprintln!("fake-dc: {peer}: no complete header, closing");
        }
        return;
    }
    let Some((tag, dc, ciphers)) = parse_dc_side_header(&header) else {
        bump(&shared.rejected, 1);
        if cfg.log {
            eprintln!("fake-dc: {peer}: bad obfuscated2 tag, closing");
        }
        return;
    };
    shared.seen().push((tag, dc.0));
    if cfg.log {
        eprintln!("fake-dc: {peer}: connected, tag {} dc {}", tag.name(), dc.0);
    }
    let r = match cfg.mode {
        FakeDcMode::Echo => echo(&mut s, ciphers, &shared).await,
        FakeDcMode::Mtproto => mtproto(&mut s, tag, ciphers, &cfg, &shared, peer).await,
    };
    if cfg.log {
        match r {
            Ok(()) => eprintln!("fake-dc: {peer}: closed by client"),
            Err(e) => eprintln!("fake-dc: {peer}: closing: {e:#}"),
        }
    }
}

async fn echo(s: &mut TcpStream, mut c: CipherPair, shared: &Shared) -> anyhow::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let chunk = &mut buf[..n];
        c.dec.apply(chunk);
        c.enc.apply(chunk);
        s.write_all(chunk).await?;
        bump(&shared.echoed, n as u64);
    }
}

/// Per-connection state of the auth-key exchange.
#[derive(Default)]
struct Exchange {
    /// The nonce of the last `req_pq*` and the server_nonce we answered it with.
    pq: Option<([u8; 16], [u8; 16])>,
    last_msg_id: u64,
}

async fn mtproto(
    s: &mut TcpStream,
    tag: ProtoTag,
    mut c: CipherPair,
    cfg: &FakeDcConfig,
    shared: &Shared,
    peer: SocketAddr,
) -> anyhow::Result<()> {
    let mut rx: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    let mut ex = Exchange::default();
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        c.dec.apply(&mut buf[..n]);
        rx.extend_from_slice(&buf[..n]);
        let mut off = 0;
        loop {
            // `decode` refuses lengths over `max_frame`, so `rx` stays bounded.
            match transport::decode(tag, &rx[off..], cfg.max_frame) {
                Ok(Decoded::Frame(f)) => {
                    let payload = &rx[off + f.start..off + f.end];
                    if let Some(body) = answer(payload, &mut ex, shared) {
                        if cfg.log {
                            let ctor = mtproto::constructor(&body).unwrap_or(0);
                            eprintln!("fake-dc: {peer}: answering {ctor:#010x}");
                        }
                        ex.last_msg_id = mtproto::next_msg_id(ex.last_msg_id, 1);
                        let msg = mtproto::wrap_unencrypted(ex.last_msg_id, &body);
                        let mut pad = vec![0u8; random_range(0, 3) as usize];
                        fill_random(&mut pad);
                        // Bodies are whole words, so abridged framing cannot fail.
                        transport::encode_frame(tag, &msg, &pad, &mut out)
                            .map_err(|e| anyhow::anyhow!("framing an answer: {e}"))?;
                    }
                    off += f.consumed;
                }
                Ok(Decoded::NeedMore(_)) => break,
                Err(e) => anyhow::bail!("bad client frame: {e}"),
            }
        }
        rx.drain(..off);
        if !out.is_empty() {
            c.enc.apply(&mut out);
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

/// The answer body to one client message, if it is one the fake DC answers.
fn answer(payload: &[u8], ex: &mut Exchange, shared: &Shared) -> Option<Vec<u8>> {
    let (_msg_id, body) = mtproto::parse_unencrypted(payload)?;
    let mut r = TlReader::new(body);
    match r.u32()? {
        mtproto::REQ_PQ_MULTI | mtproto::REQ_PQ => {
            let nonce: [u8; 16] = r.array()?;
            let mut server_nonce = [0u8; 16];
            fill_random(&mut server_nonce);
            ex.pq = Some((nonce, server_nonce));
            bump(&shared.res_pq, 1);
            Some(mtproto::fake_res_pq(nonce, server_nonce).to_body())
        }
        mtproto::REQ_DH_PARAMS => {
            let nonce: [u8; 16] = TlReader::new(body.get(4..)?).array()?;
            let valid = ReqDhParams::parse_fields(&mut r).is_some_and(|req| {
                ex.pq == Some((req.nonce, req.server_nonce))
                    && req.p == mtproto::be_bytes_minimal(FAKE_P)
                    && req.q == mtproto::be_bytes_minimal(FAKE_Q)
                    && req.fingerprint == FAKE_FINGERPRINT
                    && req.encrypted_data.len() == ENCRYPTED_DATA_LEN
            });
            let server_nonce = match (valid, ex.pq) {
                (true, Some((_, sn))) => {
                    bump(&shared.dh_ok, 1);
                    sn
                }
                _ => {
                    bump(&shared.dh_invalid, 1);
                    [0; 16]
                }
            };
            let ok = DhParamsOk {
                nonce,
                server_nonce,
                encrypted_answer: vec![0; FAKE_ANSWER_LEN],
            };
            Some(ok.to_body())
        }
        _ => None,
    }
}
