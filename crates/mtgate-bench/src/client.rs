//! The load generator's client side of the protocol, built on `mtgate-proto`.
//!
//! [`connect`] opens one connection to a [`Target`] and completes the whole
//! handshake the way a Telegram client does: plain obfuscated2 (classic
//! intermediate tag, or the padded tag for `dd`) or FakeTLS (`ee`: a signed
//! ClientHello, the server's answer checked with `verify_server_hello`, a CCS,
//! then application-data records). Toward the plain relay it sends the header
//! a client sends a DC (no secret), which the relay passes through untouched.
//! Every connection then does one verified round trip: the 8-byte mode word
//! (see [`crate::dc`]) is echoed back by the DC and decrypted here.
//!
//! After that a [`Conn`] either exchanges verified messages ([`Conn::round_trip`])
//! or, in raw mode, is split for bulk traffic whose payload is never ciphered
//! (the proxy relays it all the same). [`RecordCounter`] counts FakeTLS payload
//! bytes without copying them.

use crate::dc::{MAGIC_RAW, MAGIC_VERIFY};
use anyhow::{bail, ensure, Context as _};
use mtgate_crypto::{fill_random, AesCtr, Key16};
use mtgate_proto::faketls::{
    app_record_header, build_client_hello, server_hello_len, verify_server_hello, RecordStripper,
    CCS_RECORD, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN,
};
use mtgate_proto::obfs2::{build_header, is_valid_init, HEADER_LEN};
use mtgate_proto::{DcIndex, ProtoTag};
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How a client speaks to the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The plain TCP relay: the DC's own obfuscated2 header, no secret.
    Relay,
    /// Classic obfuscated2 (intermediate tag).
    Classic,
    /// Obfuscated2 with the padded-intermediate tag.
    Dd,
    /// FakeTLS.
    Ee,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Relay => "relay",
            Mode::Classic => "classic",
            Mode::Dd => "dd",
            Mode::Ee => "ee",
        }
    }
}

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// Label in the report (e.g. `mtgate ee`, `relay`).
    pub label: String,
    pub addr: SocketAddr,
    pub mode: Mode,
    /// The user key (unused for [`Mode::Relay`]).
    pub key: Key16,
    /// SNI for FakeTLS.
    pub domain: String,
    /// DC index written into the client header.
    pub dc: i16,
}

/// One established connection.
pub struct Conn {
    pub stream: TcpStream,
    enc: AesCtr,
    dec: AesCtr,
    tls: bool,
    strip: RecordStripper,
    /// Payload bytes received but not yet consumed (decrypted).
    pending: Vec<u8>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
}

fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn random_init() -> [u8; HEADER_LEN] {
    let mut r = [0u8; HEADER_LEN];
    loop {
        fill_random(&mut r);
        if is_valid_init(&r) {
            return r;
        }
    }
}

/// Connects and completes the handshake plus the mode-word round trip.
/// `raw` selects the DC's verbatim echo for everything after the mode word.
pub async fn connect(t: &Target, raw: bool) -> anyhow::Result<Conn> {
    let stream = TcpStream::connect(t.addr)
        .await
        .with_context(|| format!("connecting to {}", t.addr))?;
    stream.set_nodelay(true)?;
    let (tag, secret) = match t.mode {
        Mode::Relay => (ProtoTag::Intermediate, None),
        Mode::Classic => (ProtoTag::Intermediate, Some(&t.key)),
        Mode::Dd | Mode::Ee => (ProtoTag::Padded, Some(&t.key)),
    };
    let (wire, ciphers) = build_header(&random_init(), tag, DcIndex(t.dc), secret);
    let mut c = Conn {
        stream,
        enc: ciphers.enc,
        dec: ciphers.dec,
        tls: t.mode == Mode::Ee,
        strip: RecordStripper::new(),
        pending: Vec::new(),
        rbuf: vec![0u8; 8 * 1024],
        wbuf: Vec::with_capacity(256),
    };
    let word = if raw { MAGIC_RAW } else { MAGIC_VERIFY };
    let mut first = Vec::with_capacity(HEADER_LEN + 8 + 16);
    if c.tls {
        tls_hello(&mut c, t).await?;
        first.extend_from_slice(&CCS_RECORD);
        first.extend_from_slice(&app_record_header(HEADER_LEN + 8));
    }
    first.extend_from_slice(&wire);
    let mut w = word;
    c.enc.apply(&mut w);
    first.extend_from_slice(&w);
    c.stream.write_all(&first).await?;
    let mut back = [0u8; 8];
    c.recv_exact(&mut back).await.context("first round trip")?;
    ensure!(back == word, "first round trip: echo does not match");
    Ok(c)
}

/// Sends a signed ClientHello and checks the server's answer.
async fn tls_hello(c: &mut Conn, t: &Target) -> anyhow::Result<()> {
    let mut rnd = [0u8; 64];
    fill_random(&mut rnd);
    let hello = build_client_hello(&t.key, &t.domain, unix_now(), &rnd, 517);
    let mut client_random = [0u8; 32];
    client_random.copy_from_slice(&hello[11..43]);
    c.stream.write_all(&hello).await?;
    let mut resp = Vec::with_capacity(8 * 1024);
    loop {
        if let Some(len) = server_hello_len(&resp) {
            ensure!(len <= 64 * 1024, "server hello too long");
            if resp.len() >= len {
                ensure!(resp.len() == len, "proxy sent data after its ServerHello");
                ensure!(
                    verify_server_hello(&resp, &client_random, &t.key),
                    "ServerHello digest does not verify"
                );
                return Ok(());
            }
        }
        ensure!(resp.len() < 64 * 1024, "server hello too long");
        let n = c.stream.read(&mut c.rbuf).await?;
        if n == 0 {
            bail!("proxy closed during the TLS handshake");
        }
        resp.extend_from_slice(&c.rbuf[..n]);
    }
}

impl Conn {
    /// Reads, strips records and decrypts exactly `out.len()` payload bytes.
    pub async fn recv_exact(&mut self, out: &mut [u8]) -> anyhow::Result<()> {
        while self.pending.len() < out.len() {
            let n = self.stream.read(&mut self.rbuf).await?;
            if n == 0 {
                bail!("connection closed by the proxy");
            }
            let n = if self.tls {
                self.strip
                    .strip_in_place(&mut self.rbuf[..n])
                    .map_err(|e| anyhow::anyhow!("bad TLS record from proxy: {e:?}"))?
            } else {
                n
            };
            self.pending.extend_from_slice(&self.rbuf[..n]);
        }
        let k = out.len();
        out.copy_from_slice(&self.pending[..k]);
        self.pending.drain(..k);
        self.dec.apply(out);
        Ok(())
    }

    /// Encrypts `msg` (framed in one record for FakeTLS) and sends it.
    pub async fn send(&mut self, msg: &[u8]) -> anyhow::Result<()> {
        self.wbuf.clear();
        if self.tls {
            for chunk in msg.chunks(MAX_RECORD_PAYLOAD) {
                self.wbuf.extend_from_slice(&app_record_header(chunk.len()));
                let at = self.wbuf.len();
                self.wbuf.extend_from_slice(chunk);
                self.enc.apply(&mut self.wbuf[at..]);
            }
        } else {
            self.wbuf.extend_from_slice(msg);
            self.enc.apply(&mut self.wbuf);
        }
        self.stream.write_all(&self.wbuf).await?;
        Ok(())
    }

    /// Sends `msg` and waits for its echo; fails if the echo differs.
    pub async fn round_trip(&mut self, msg: &[u8], scratch: &mut Vec<u8>) -> anyhow::Result<()> {
        self.send(msg).await?;
        scratch.resize(msg.len(), 0);
        self.recv_exact(scratch).await?;
        ensure!(scratch[..] == msg[..], "echo does not match what was sent");
        Ok(())
    }

    /// Whether this connection frames in TLS records.
    pub fn is_tls(&self) -> bool {
        self.tls
    }
}

/// The bytes a raw bulk writer sends over and over: 64 KiB of payload, framed
/// as four full TLS records for FakeTLS. Returns (wire bytes, payload bytes).
pub fn bulk_chunk(tls: bool) -> (Vec<u8>, usize) {
    const RECORDS: usize = 4;
    let payload = RECORDS * MAX_RECORD_PAYLOAD;
    if !tls {
        return (vec![0x5a; payload], payload);
    }
    let mut v = Vec::with_capacity(RECORDS * (RECORD_HEADER_LEN + MAX_RECORD_PAYLOAD));
    for _ in 0..RECORDS {
        v.extend_from_slice(&app_record_header(MAX_RECORD_PAYLOAD));
        v.extend_from_slice(&[0x5a; MAX_RECORD_PAYLOAD]);
    }
    (v, payload)
}

/// Counts the payload bytes of a TLS record stream without moving them.
#[derive(Default)]
pub struct RecordCounter {
    hdr_left: usize,
    body_left: usize,
    hdr: [u8; RECORD_HEADER_LEN],
}

impl RecordCounter {
    /// Consumes `buf`; returns the payload bytes in it.
    pub fn feed(&mut self, buf: &[u8]) -> usize {
        let mut i = 0;
        let mut payload = 0;
        while i < buf.len() {
            if self.body_left > 0 {
                let take = self.body_left.min(buf.len() - i);
                self.body_left -= take;
                payload += take;
                i += take;
                continue;
            }
            if self.hdr_left == 0 {
                self.hdr_left = RECORD_HEADER_LEN;
            }
            let take = self.hdr_left.min(buf.len() - i);
            let at = RECORD_HEADER_LEN - self.hdr_left;
            self.hdr[at..at + take].copy_from_slice(&buf[i..i + take]);
            self.hdr_left -= take;
            i += take;
            if self.hdr_left == 0 {
                self.body_left = u16::from_be_bytes([self.hdr[3], self.hdr[4]]) as usize;
            }
        }
        payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dc::start_echo_dc;

    /// A client in relay mode speaks the DC's own header, so it can talk to
    /// the echo DC directly: the verified and the raw echo both work.
    #[tokio::test]
    async fn echo_dc_round_trips() {
        let dc = start_echo_dc(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .unwrap();
        let t = Target {
            label: "direct".into(),
            addr: dc,
            mode: Mode::Relay,
            key: Key16::generate(),
            domain: "bench.example".into(),
            dc: 2,
        };
        let mut c = connect(&t, false).await.unwrap();
        let mut scratch = Vec::new();
        for len in [1usize, 256, 70_000] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 31) as u8).collect();
            c.round_trip(&msg, &mut scratch).await.unwrap();
        }
        let mut raw = connect(&t, true).await.unwrap();
        raw.stream.write_all(b"verbatim").await.unwrap();
        let mut back = [0u8; 8];
        raw.stream.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"verbatim");
    }

    #[test]
    fn record_counter_handles_any_split() {
        let (wire, payload) = bulk_chunk(true);
        for step in [1, 3, 5, 7, 4096, 16_389, wire.len()] {
            let mut c = RecordCounter::default();
            let got: usize = wire.chunks(step).map(|ch| c.feed(ch)).sum();
            assert_eq!(got, payload, "step {step}");
        }
    }
}
