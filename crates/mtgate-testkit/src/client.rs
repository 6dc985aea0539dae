//! Scripted MTProto-proxy clients for end-to-end tests and benchmarks.
//!
//! [`ObfsClient`] speaks what Telegram clients speak to a proxy:
//!
//! * plain obfuscated2 ([`ClientMode::Classic`] with any tag, [`ClientMode::Secure`]
//!   = tag `dd`): a random 64-byte init satisfying
//!   [`mtgate_proto::obfs2::is_valid_init`], turned into a header with
//!   [`mtgate_proto::obfs2::build_header`] and the secret's key;
//! * FakeTLS ([`ClientMode::FakeTls`]): a signed ClientHello
//!   ([`mtgate_proto::faketls::build_client_hello`], current Unix time, TDLib-like
//!   size 1726..=1822 bytes unless told otherwise, optionally split over several
//!   TCP writes), the server response read and checked with
//!   [`mtgate_proto::faketls::server_hello_len`] and
//!   [`mtgate_proto::faketls::verify_server_hello`], then one ChangeCipherSpec
//!   and `17 03 03` records of at most 2878 payload bytes (as TDLib) carrying the
//!   obfuscated2 header and stream; incoming records are stripped with
//!   [`mtgate_proto::faketls::RecordStripper`].
//!
//! Like TDLib, the client holds its obfuscated2 header back until it has
//! something to send (so the header and the first frame travel together); any
//! receive, [`ObfsClient::flush`] or [`ObfsClient::shutdown`] sends it too.
//!
//! [`ObfsClient::connect_direct_dc`] builds the header with no secret, as a
//! proxy does toward a DC, so the client can talk to [`crate::FakeDc`] itself.
//!
//! On top of the byte stream: [`ObfsClient::send_frame`]/[`ObfsClient::recv_frame`]
//! (transport framing of the tag), [`ObfsClient::send_raw`]/[`ObfsClient::recv_exact`]
//! (no framing, for the echo DC), and the first two steps of the auth-key
//! exchange ([`ObfsClient::req_pq_multi`], [`ObfsClient::req_dh_params`]).
//! Every I/O step is bounded by [`ClientOptions::io_timeout`]. While writing,
//! the client keeps reading whatever arrives, so large echo round trips cannot
//! deadlock on full socket buffers.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use mtgate_crypto::{fill_random, random_range, AesCtr, Key16};
use mtgate_proto::faketls::{
    app_record_header, build_client_hello, server_hello_len, verify_server_hello, RecordStripper,
    CCS_RECORD, RECORD_HEADER_LEN,
};
use mtgate_proto::obfs2::{build_header, is_valid_init, DcIndex};
use mtgate_proto::transport::{self, Decoded, MAX_FRAME_LEN};
use mtgate_proto::{ProtoTag, ProxySecret, SecretKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::mtproto::{self, DhParamsOk, ReqDhParams, ResPq, ENCRYPTED_DATA_LEN};

/// TDLib's largest application-data payload per record.
pub const TDLIB_MAX_RECORD: usize = 2878;

/// How the client talks to the proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMode {
    /// Plain obfuscated2 with this tag (a plain 16-byte secret).
    Classic(ProtoTag),
    /// Plain obfuscated2 with the padded-intermediate tag (`dd` secret).
    Secure,
    /// FakeTLS with this SNI (`ee` secret); padded intermediate inside unless
    /// [`ClientOptions::inner_tag`] says otherwise.
    FakeTls { domain: String },
}

impl ClientMode {
    /// The mode a client secret selects (plain → intermediate, as TDLib does).
    pub fn from_secret(secret: &ProxySecret) -> Self {
        match &secret.kind {
            SecretKind::Plain => Self::Classic(ProtoTag::Intermediate),
            SecretKind::Dd => Self::Secure,
            SecretKind::Ee(domain) => Self::FakeTls {
                domain: domain.clone(),
            },
        }
    }

    fn tag(&self, opts: &ClientOptions) -> ProtoTag {
        match self {
            Self::Classic(t) => *t,
            Self::Secure => ProtoTag::Padded,
            Self::FakeTls { .. } => opts.inner_tag.unwrap_or(ProtoTag::Padded),
        }
    }
}

/// Knobs of a scripted client; [`Default`] behaves like TDLib.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Total FakeTLS ClientHello record size (e.g. 512..16000); `None` = random
    /// 1726..=1822 like TDLib 1.8.69. Sizes under the builder's minimum are raised to it.
    pub hello_len: Option<usize>,
    /// Number of TCP writes the ClientHello is split into (1 = one write).
    pub hello_segments: usize,
    /// Pause between two ClientHello writes.
    pub segment_delay: Duration,
    /// FakeTLS timestamp; `None` = the current Unix time.
    pub timestamp: Option<u32>,
    /// Session id (`[..32]`) and key share (`[32..]`) of the ClientHello; `None` = random.
    pub hello_random: Option<[u8; 64]>,
    /// The 64 random bytes of the obfuscated2 header; `None` = random and valid.
    /// Fixing it (and the hello fields) makes a connection repeatable, for replay tests.
    pub init: Option<[u8; 64]>,
    /// The obfuscated2 tag inside FakeTLS (default padded intermediate).
    pub inner_tag: Option<ProtoTag>,
    /// Largest application-data payload per record the client sends.
    pub max_record: usize,
    /// Add 0..=15 random bytes to each padded-intermediate frame, as TDLib does.
    pub frame_padding: bool,
    /// Limit for connecting and for each send or receive.
    pub io_timeout: Duration,
    /// Local address to connect from (e.g. `127.0.0.7` to be another source on loopback).
    pub bind: Option<std::net::IpAddr>,
    /// Bytes sent right after connecting, before the handshake: what a front
    /// end puts first (a PROXY protocol header).
    pub preamble: Vec<u8>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            hello_len: None,
            hello_segments: 1,
            segment_delay: Duration::from_millis(20),
            timestamp: None,
            hello_random: None,
            init: None,
            inner_tag: None,
            max_record: TDLIB_MAX_RECORD,
            frame_padding: true,
            io_timeout: Duration::from_secs(10),
            bind: None,
            preamble: Vec::new(),
        }
    }
}

/// The receiving half's state: record stripping, decryption, buffered plaintext.
struct Inbound {
    tls: Option<RecordStripper>,
    dec: AesCtr,
    /// Decrypted stream bytes not yet consumed.
    rx: Vec<u8>,
    /// The peer closed (or reset) its side; `error` says why if it was an error.
    eof: bool,
    error: Option<String>,
}

impl Inbound {
    /// Takes raw bytes from the socket (TLS records or obfuscated stream).
    fn ingest(&mut self, raw: &mut [u8]) -> anyhow::Result<()> {
        let n = match &mut self.tls {
            Some(s) => s
                .strip_in_place(raw)
                .map_err(|e| anyhow::anyhow!("bad TLS record from the proxy: {e}"))?,
            None => raw.len(),
        };
        let data = &mut raw[..n];
        self.dec.apply(data);
        self.rx.extend_from_slice(data);
        Ok(())
    }
}

/// A scripted client connection (see the module docs).
pub struct ObfsClient {
    stream: TcpStream,
    tag: ProtoTag,
    enc: AesCtr,
    inbound: Inbound,
    /// Encrypted stream bytes held back (the header) until the first write.
    pending: Vec<u8>,
    /// FakeTLS: the ChangeCipherSpec has not been sent yet.
    ccs_pending: bool,
    tls: bool,
    opts: ClientOptions,
    last_msg_id: u64,
    server_hello: Option<Vec<u8>>,
}

impl std::fmt::Debug for ObfsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObfsClient")
            .field("peer", &self.stream.peer_addr().ok())
            .field("tag", &self.tag)
            .field("tls", &self.tls)
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn random_init() -> [u8; 64] {
    let mut r = [0u8; 64];
    loop {
        fill_random(&mut r);
        if is_valid_init(&r) {
            return r;
        }
    }
}

async fn timed<T>(
    limit: Duration,
    what: &str,
    f: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, f).await {
        Ok(r) => r,
        Err(_) => bail!("{what}: timed out after {limit:?}"),
    }
}

impl ObfsClient {
    /// Connects to a proxy with the 16-byte user key, in `mode`, asking for DC `dc`.
    pub async fn connect(
        proxy: SocketAddr,
        key: &Key16,
        mode: ClientMode,
        dc: i16,
    ) -> anyhow::Result<Self> {
        Self::open(proxy, Some(key), mode, dc, ClientOptions::default()).await
    }

    /// [`ObfsClient::connect`] with options.
    pub async fn connect_with(
        proxy: SocketAddr,
        key: &Key16,
        mode: ClientMode,
        dc: i16,
        opts: ClientOptions,
    ) -> anyhow::Result<Self> {
        Self::open(proxy, Some(key), mode, dc, opts).await
    }

    /// Connects with a client secret (plain, `dd` or `ee`+domain), in the mode it selects.
    pub async fn connect_secret(
        proxy: SocketAddr,
        secret: &ProxySecret,
        dc: i16,
    ) -> anyhow::Result<Self> {
        let mode = ClientMode::from_secret(secret);
        Self::open(proxy, Some(&secret.key), mode, dc, ClientOptions::default()).await
    }

    /// Connects straight to a DC (e.g. [`crate::FakeDc`]): obfuscated2 without a secret.
    pub async fn connect_direct_dc(
        dc_addr: SocketAddr,
        tag: ProtoTag,
        dc: i16,
    ) -> anyhow::Result<Self> {
        Self::connect_direct_dc_with(dc_addr, tag, dc, ClientOptions::default()).await
    }

    /// [`ObfsClient::connect_direct_dc`] with options.
    pub async fn connect_direct_dc_with(
        dc_addr: SocketAddr,
        tag: ProtoTag,
        dc: i16,
        opts: ClientOptions,
    ) -> anyhow::Result<Self> {
        Self::open(dc_addr, None, ClientMode::Classic(tag), dc, opts).await
    }

    async fn open(
        addr: SocketAddr,
        key: Option<&Key16>,
        mode: ClientMode,
        dc: i16,
        opts: ClientOptions,
    ) -> anyhow::Result<Self> {
        let mut stream = timed(opts.io_timeout, "connect", async {
            match opts.bind {
                None => TcpStream::connect(addr).await,
                Some(ip) => {
                    let sock = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    sock.bind(SocketAddr::new(ip, 0))?;
                    sock.connect(addr).await
                }
            }
            .with_context(|| format!("connecting to {addr}"))
        })
        .await?;
        stream.set_nodelay(true)?;
        if !opts.preamble.is_empty() {
            stream
                .write_all(&opts.preamble)
                .await
                .context("sending the preamble")?;
        }
        let tag = mode.tag(&opts);
        let mut leftover = Vec::new();
        let mut server_hello = None;
        if let ClientMode::FakeTls { domain } = &mode {
            let key = key.context("FakeTLS needs a secret")?;
            let (resp, rest) = timed(
                opts.io_timeout,
                "FakeTLS handshake",
                fake_tls_handshake(&mut stream, key, domain, &opts),
            )
            .await?;
            server_hello = Some(resp);
            leftover = rest;
        }
        let init = opts.init.unwrap_or_else(random_init);
        let (header, ciphers) = build_header(&init, tag, DcIndex(dc), key);
        let tls = server_hello.is_some();
        let mut inbound = Inbound {
            tls: tls.then(RecordStripper::new),
            dec: ciphers.dec,
            rx: Vec::new(),
            eof: false,
            error: None,
        };
        if !leftover.is_empty() {
            inbound.ingest(&mut leftover)?;
        }
        Ok(Self {
            stream,
            tag,
            enc: ciphers.enc,
            inbound,
            pending: header.to_vec(),
            ccs_pending: tls,
            tls,
            opts,
            last_msg_id: 0,
            server_hello,
        })
    }

    /// The transport tag in use.
    pub fn tag(&self) -> ProtoTag {
        self.tag
    }

    /// The client's own address.
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.stream.local_addr()?)
    }

    /// The server's FakeTLS response (ServerHello, CCS, fake record), for FakeTLS clients.
    pub fn server_hello(&self) -> Option<&[u8]> {
        self.server_hello.as_deref()
    }

    /// Sends the held-back header (and the CCS for FakeTLS) now.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() && !self.ccs_pending {
            return Ok(());
        }
        self.write_stream(Vec::new()).await
    }

    /// Sends `payload` as one transport frame of the tag (abridged needs whole words;
    /// padded frames get 0..=15 random bytes unless disabled).
    pub async fn send_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        let mut pad = Vec::new();
        if self.tag == ProtoTag::Padded && self.opts.frame_padding {
            pad.resize(random_range(0, 15) as usize, 0);
            fill_random(&mut pad);
        }
        let mut out = Vec::with_capacity(payload.len() + 4 + pad.len());
        transport::encode_frame(self.tag, payload, &pad, &mut out)
            .map_err(|e| anyhow::anyhow!("framing {} bytes: {e}", payload.len()))?;
        self.enc.apply(&mut out);
        self.write_stream(out).await
    }

    /// Receives one transport frame and returns its payload (padded-intermediate
    /// payloads are cut down to whole words, which drops the server's 0..3 pad bytes).
    pub async fn recv_frame(&mut self) -> anyhow::Result<Vec<u8>> {
        self.flush().await?;
        loop {
            match transport::decode(self.tag, &self.inbound.rx, MAX_FRAME_LEN) {
                Ok(Decoded::Frame(f)) => {
                    let payload = self.inbound.rx[f.start..f.end].to_vec();
                    self.inbound.rx.drain(..f.consumed);
                    return Ok(payload);
                }
                Ok(Decoded::NeedMore(_)) => self.read_more("receiving a frame").await?,
                Err(e) => bail!("bad frame from the server: {e}"),
            }
        }
    }

    /// Sends `data` through the obfuscated stream without framing.
    pub async fn send_raw(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let mut out = data.to_vec();
        self.enc.apply(&mut out);
        self.write_stream(out).await
    }

    /// Receives exactly `n` decrypted stream bytes (no framing).
    pub async fn recv_exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        self.flush().await?;
        while self.inbound.rx.len() < n {
            self.read_more("receiving raw bytes").await?;
        }
        Ok(self.inbound.rx.drain(..n).collect())
    }

    /// Half-closes the connection (after sending anything held back).
    /// Sends `msg` raw and checks the same bytes come back within `limit`
    /// (through a proxy to an echo DC).
    pub async fn echo_round_trip(&mut self, msg: &[u8], limit: Duration) -> anyhow::Result<()> {
        self.send_raw(msg).await?;
        let got = tokio::time::timeout(limit, self.recv_exact(msg.len()))
            .await
            .map_err(|_| anyhow::anyhow!("echo timed out"))??;
        anyhow::ensure!(got == msg, "echo differs");
        Ok(())
    }

    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        self.stream.shutdown().await?;
        Ok(())
    }

    /// Whether the peer closes the connection within `limit` (discarding
    /// anything it sends meanwhile). Sends the held-back header first.
    pub async fn closed_within(&mut self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        // A write failing means the peer is gone already.
        if tokio::time::timeout_at(deadline, self.flush())
            .await
            .is_ok_and(|r| r.is_err())
        {
            return true;
        }
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            if self.inbound.eof {
                return true;
            }
            match tokio::time::timeout_at(deadline, self.stream.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Sends an unencrypted MTProto message with `body` in one frame.
    pub async fn send_message(&mut self, body: &[u8]) -> anyhow::Result<()> {
        self.last_msg_id = mtproto::next_msg_id(self.last_msg_id, 0);
        let msg = mtproto::wrap_unencrypted(self.last_msg_id, body);
        self.send_frame(&msg).await
    }

    /// Receives one unencrypted MTProto message: its msg_id and body.
    pub async fn recv_message(&mut self) -> anyhow::Result<(u64, Vec<u8>)> {
        let payload = self.recv_frame().await?;
        if payload.len() == 4 {
            let code = i32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]);
            bail!("transport error {code} from the server");
        }
        let (msg_id, body) = mtproto::parse_unencrypted(&payload).with_context(|| {
            let n = payload.len().min(32);
            format!(
                "not an unencrypted MTProto message: {}",
                hex::encode(&payload[..n])
            )
        })?;
        ensure!(msg_id != 0, "server message with msg_id 0");
        Ok((msg_id, body.to_vec()))
    }

    /// Sends `req_pq_multi` with a random nonce; returns the `resPQ` after
    /// checking that it echoes the nonce.
    pub async fn req_pq_multi(&mut self) -> anyhow::Result<ResPq> {
        let mut nonce = [0u8; 16];
        fill_random(&mut nonce);
        let mut body = mtproto::REQ_PQ_MULTI.to_le_bytes().to_vec();
        body.extend_from_slice(&nonce);
        self.send_message(&body).await?;
        let (_, answer) = self.recv_message().await?;
        let res = ResPq::parse(&answer).with_context(|| {
            let n = answer.len().min(32);
            format!("expected resPQ, got {}", hex::encode(&answer[..n]))
        })?;
        ensure!(res.nonce == nonce, "resPQ does not echo the nonce");
        Ok(res)
    }

    /// Sends a valid `req_DH_params` for `res` (pq factorised, first fingerprint,
    /// 256 random bytes of `encrypted_data`) and returns the `server_DH_params_ok`.
    /// The fake DC answers a zeroed `server_nonce` if it found the request invalid.
    pub async fn req_dh_params(&mut self, res: &ResPq) -> anyhow::Result<DhParamsOk> {
        let req = dh_params_request(res)?;
        self.req_dh_params_with(&req).await
    }

    /// Sends `req` as is and returns the `server_DH_params_ok` (nonce echo checked).
    pub async fn req_dh_params_with(&mut self, req: &ReqDhParams) -> anyhow::Result<DhParamsOk> {
        self.send_message(&req.to_body()).await?;
        let (_, answer) = self.recv_message().await?;
        let ok = DhParamsOk::parse(&answer).with_context(|| {
            let n = answer.len().min(32);
            format!(
                "expected server_DH_params_ok, got {}",
                hex::encode(&answer[..n])
            )
        })?;
        ensure!(
            ok.nonce == req.nonce,
            "server_DH_params_ok does not echo the nonce"
        );
        Ok(ok)
    }

    /// Reads at least one more byte into the inbound buffer.
    async fn read_more(&mut self, what: &str) -> anyhow::Result<()> {
        if self.inbound.eof {
            match &self.inbound.error {
                Some(e) => bail!("{what}: connection failed: {e}"),
                None => bail!("{what}: connection closed by the peer"),
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        let n = match tokio::time::timeout(self.opts.io_timeout, self.stream.read(&mut buf)).await {
            Err(_) => bail!("{what}: timed out after {:?}", self.opts.io_timeout),
            Ok(r) => r.with_context(|| what.to_owned())?,
        };
        if n == 0 {
            self.inbound.eof = true;
            bail!("{what}: connection closed by the peer");
        }
        self.inbound.ingest(&mut buf[..n])
    }

    /// Writes already-encrypted stream bytes (after anything held back), wrapped
    /// in TLS records for FakeTLS, while draining whatever the peer sends.
    async fn write_stream(&mut self, data: Vec<u8>) -> anyhow::Result<()> {
        let stream_bytes = if self.pending.is_empty() {
            data
        } else {
            let mut p = std::mem::take(&mut self.pending);
            p.extend_from_slice(&data);
            p
        };
        let wire = if self.tls {
            let max = self.opts.max_record.clamp(1, 65_535);
            let mut w =
                Vec::with_capacity(stream_bytes.len() + 6 + 5 * (stream_bytes.len() / max + 1));
            if std::mem::take(&mut self.ccs_pending) {
                w.extend_from_slice(&CCS_RECORD);
            }
            for chunk in stream_bytes.chunks(max) {
                w.extend_from_slice(&app_record_header(chunk.len()));
                w.extend_from_slice(chunk);
            }
            w
        } else {
            stream_bytes
        };
        let limit = self.opts.io_timeout;
        let Self {
            stream, inbound, ..
        } = self;
        timed(limit, "sending", write_draining(stream, inbound, &wire)).await
    }
}

/// Writes all of `wire`, reading (and buffering) what arrives meanwhile.
async fn write_draining(
    stream: &mut TcpStream,
    inbound: &mut Inbound,
    wire: &[u8],
) -> anyhow::Result<()> {
    let mut pos = 0;
    let mut buf = vec![0u8; 64 * 1024];
    let (mut rd, mut wr) = stream.split();
    while pos < wire.len() {
        tokio::select! {
            biased;
            w = wr.write(&wire[pos..]) => {
                let n = w.context("sending")?;
                ensure!(n > 0, "sending: connection closed");
                pos += n;
            }
            r = rd.read(&mut buf), if !inbound.eof => match r {
                Ok(0) => inbound.eof = true,
                Ok(n) => inbound.ingest(&mut buf[..n])?,
                Err(e) => {
                    inbound.eof = true;
                    inbound.error = Some(e.to_string());
                }
            },
        }
    }
    Ok(())
}

/// A valid `req_DH_params` for a `resPQ` (as a real client would build it).
pub fn dh_params_request(res: &ResPq) -> anyhow::Result<ReqDhParams> {
    let pq = res.pq_u64().context("pq longer than 64 bits")?;
    let (p, q) = mtproto::factorize(pq).context("pq does not factorise")?;
    let fingerprint = *res
        .fingerprints
        .first()
        .context("resPQ lists no fingerprint")?;
    let mut encrypted_data = vec![0u8; ENCRYPTED_DATA_LEN];
    fill_random(&mut encrypted_data);
    Ok(ReqDhParams {
        nonce: res.nonce,
        server_nonce: res.server_nonce,
        p: mtproto::be_bytes_minimal(p),
        q: mtproto::be_bytes_minimal(q),
        fingerprint,
        encrypted_data,
    })
}

/// Sends the ClientHello and reads the server's response; returns the verified
/// response and any bytes that came after it.
async fn fake_tls_handshake(
    stream: &mut TcpStream,
    key: &Key16,
    domain: &str,
    opts: &ClientOptions,
) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let ts = opts.timestamp.unwrap_or(unix_now() as u32);
    let mut hello_random = [0u8; 64];
    match opts.hello_random {
        Some(r) => hello_random = r,
        None => fill_random(&mut hello_random),
    }
    let len = opts
        .hello_len
        .unwrap_or_else(|| random_range(1726, 1822) as usize);
    ensure!(
        len <= RECORD_HEADER_LEN + 65_535,
        "ClientHello of {len} bytes does not fit one record"
    );
    let hello = build_client_hello(key, domain, ts, &hello_random, len);
    let mut client_random = [0u8; 32];
    client_random.copy_from_slice(&hello[11..43]);

    let segments = opts.hello_segments.clamp(1, hello.len());
    let seg_len = hello.len().div_ceil(segments);
    for (i, seg) in hello.chunks(seg_len).enumerate() {
        if i > 0 && !opts.segment_delay.is_zero() {
            tokio::time::sleep(opts.segment_delay).await;
        }
        stream
            .write_all(seg)
            .await
            .context("sending the ClientHello")?;
    }

    // Handshake record, CCS, one application record: at most 2 × 64 KiB.
    const MAX_RESPONSE: usize = 2 * (RECORD_HEADER_LEN + 65_535) + 6;
    let mut resp = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let total = loop {
        if resp.len() >= 3 && resp[..3] != [0x16, 0x03, 0x03] {
            bail!(
                "FakeTLS: the server answered {} instead of a ServerHello record",
                hex::encode(&resp[..resp.len().min(16)])
            );
        }
        if let Some(total) = server_hello_len(&resp) {
            if resp.len() >= total {
                break total;
            }
        }
        ensure!(
            resp.len() <= MAX_RESPONSE,
            "FakeTLS: server response too long"
        );
        let n = stream
            .read(&mut buf)
            .await
            .context("reading the ServerHello")?;
        if n == 0 {
            bail!(
                "FakeTLS: connection closed during the handshake (after {} response bytes)",
                resp.len()
            );
        }
        resp.extend_from_slice(&buf[..n]);
    };
    let rest = resp.split_off(total);
    let hs = RECORD_HEADER_LEN + usize::from(u16::from_be_bytes([resp[3], resp[4]]));
    ensure!(
        resp.get(hs..hs + 9) == Some(&[0x14, 0x03, 0x03, 0x00, 0x01, 0x01, 0x17, 0x03, 0x03][..]),
        "FakeTLS: ServerHello not followed by CCS and an application record"
    );
    ensure!(
        verify_server_hello(&resp, &client_random, key),
        "FakeTLS: server digest mismatch"
    );
    Ok((resp, rest))
}
