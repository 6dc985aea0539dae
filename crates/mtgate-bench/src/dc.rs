//! The bench's own peers, run as tasks inside the bench process: an echoing
//! fake DC and a mask-site sink.
//!
//! **Echo DC.** It reads the 64-byte obfuscated2 header exactly as a Telegram
//! DC does ([`parse_dc_side_header`]: no secret), then an 8-byte mode word
//! that it decrypts:
//!
//! * [`MAGIC_VERIFY`]: echo the decrypted stream re-encrypted (so the client
//!   can check every byte of the round trip through the proxy);
//! * [`MAGIC_RAW`]: echo the mode word re-encrypted, then every later byte
//!   verbatim, with no cipher work. The proxy cannot tell the difference (it
//!   never looks at the payload), and the cores the DC and the load generator
//!   would spend on AES stay free for the proxy under test.
//!
//! Any other header or mode word closes the connection. The 64 KiB buffer is
//! allocated only once a connection has data, so idle connections stay cheap.
//!
//! **Mask sink.** mtgate's fronting opens a connection to the mask site as a
//! client connects and drops it once the client proves valid; the sink
//! accepts those and holds them (reading and discarding) until the peer closes,
//! so that cost is measured without reaching the internet.

use mtgate_proto::obfs2::{parse_dc_side_header, HEADER_LEN};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Mode word: echo with decrypt + re-encrypt (verifiable).
pub const MAGIC_VERIFY: [u8; 8] = *b"MTGBECHO";
/// Mode word: echo the rest verbatim (no cipher work).
pub const MAGIC_RAW: [u8; 8] = *b"MTGBRAW!";

const BUF: usize = 64 * 1024;

/// Binds the echo DC on `addr` and serves on the current runtime.
pub async fn start_echo_dc(addr: SocketAddr) -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(addr).await?;
    let local = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(serve(s));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(local)
}

async fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut head = [0u8; HEADER_LEN + 8];
    let got = tokio::time::timeout(Duration::from_secs(30), s.read_exact(&mut head)).await;
    if !matches!(got, Ok(Ok(_))) {
        return;
    }
    let header: [u8; HEADER_LEN] = head[..HEADER_LEN].try_into().unwrap_or([0; HEADER_LEN]);
    let Some((_tag, _dc, mut c)) = parse_dc_side_header(&header) else {
        return;
    };
    let mut word = [0u8; 8];
    word.copy_from_slice(&head[HEADER_LEN..]);
    c.dec.apply(&mut word);
    let raw = match word {
        MAGIC_RAW => true,
        MAGIC_VERIFY => false,
        _ => return,
    };
    c.enc.apply(&mut word);
    if s.write_all(&word).await.is_err() {
        return;
    }
    if s.readable().await.is_err() {
        return;
    }
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let chunk = &mut buf[..n];
        if !raw {
            c.dec.apply(chunk);
            c.enc.apply(chunk);
        }
        if s.write_all(chunk).await.is_err() {
            return;
        }
    }
}

/// Binds the mask-site sink on `127.0.0.1:0`.
pub async fn start_mask_sink() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let local = l.local_addr()?;
    tokio::spawn(async move {
        loop {
            match l.accept().await {
                Ok((mut s, _)) => {
                    tokio::spawn(async move {
                        let mut b = [0u8; 512];
                        while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    Ok(local)
}
