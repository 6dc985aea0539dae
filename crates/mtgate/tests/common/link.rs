//! The proxy-to-proxy link's test pieces: an exit in front of a fake DC,
//! a bridge linked to it, a client's resPQ through the bridge, a mask host
//! that keeps what it hears.

use super::{key, Proxy};
use mtgate::link::config::b64;
use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::Cipher;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const USERS: &str =
    "[users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"dd\"]\n";

pub fn names(c: &[Cipher]) -> String {
    let v: Vec<_> = c.iter().map(|c| format!("\"{}\"", c.name())).collect();
    format!("[{}]", v.join(", "))
}

/// An exit in front of `dc`, fronting strangers to `mask`.
pub async fn exit(
    dc: SocketAddr,
    key: &ExitKey,
    tokens: &[(&str, &Token)],
    ciphers: &[Cipher],
    mask: SocketAddr,
) -> Proxy {
    exit_with(dc, key, tokens, ciphers, mask, "").await
}

/// [`exit`] with more `[link.exit]` lines (the carriage).
pub async fn exit_with(
    dc: SocketAddr,
    key: &ExitKey,
    tokens: &[(&str, &Token)],
    ciphers: &[Cipher],
    mask: SocketAddr,
    extra: &str,
) -> Proxy {
    let t: Vec<_> = tokens
        .iter()
        .map(|(n, t)| format!("{n} = \"{}\"", b64(t.bytes())))
        .collect();
    let toml = format!(
        "[tls]\nmask_host = \"{mask}\"\nlearn_profile = false\n\
         [link.exit]\nlisten = \"127.0.0.1:0\"\nkey = \"{}\"\ntokens = {{ {} }}\nciphers = {}\n{extra}\n{USERS}",
        b64(key.secret()),
        t.join(", "),
        names(ciphers)
    );
    let p = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc]).await;
    assert!(p.link.is_some());
    p
}

/// A bridge whose own DC addresses are dead, linked to `exit_addr`.
pub async fn bridge(
    exit_addr: SocketAddr,
    exit_key: &[u8; 32],
    token: &Token,
    ciphers: &[Cipher],
    extra: &str,
) -> Proxy {
    let toml = format!(
        "[tls]\nmask_host = \"127.0.0.1:1\"\nlearn_profile = false\n\
         [link.bridge]\nexit = \"{exit_addr}\"\nexit_key = \"{}\"\ntoken = \"{}\"\nciphers = {}\n{extra}\n{USERS}",
        b64(exit_key),
        b64(token.bytes()),
        names(ciphers)
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await
}

pub async fn res_pq(proxy: SocketAddr) -> anyhow::Result<()> {
    let mut c = ObfsClient::connect(proxy, &key(), ClientMode::Secure, 2).await?;
    tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi())
        .await
        .map_err(|_| anyhow::anyhow!("no resPQ in time"))??;
    Ok(())
}

/// A listener that keeps the first bytes of each connection.
pub async fn mask_capture() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await
                {
                    let _ = tx.send(buf[..n].to_vec());
                }
            });
        }
    });
    (addr, rx)
}

/// What a link test starts from: a fake DC, a mask host that keeps what it
/// hears, and a fresh exit key and bridge token.
pub struct Rig {
    pub dc: mtgate_testkit::fake_dc::FakeDc,
    pub mask: SocketAddr,
    pub seen: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    pub key: ExitKey,
    pub token: Token,
}

pub async fn rig(mode: mtgate_testkit::fake_dc::FakeDcMode) -> Rig {
    let dc = mtgate_testkit::fake_dc::FakeDc::start("127.0.0.1:0".parse().expect("addr"), mode)
        .await
        .expect("fake DC");
    let (mask, seen) = mask_capture().await;
    Rig {
        dc,
        mask,
        seen,
        key: ExitKey::generate(),
        token: Token::generate(),
    }
}
