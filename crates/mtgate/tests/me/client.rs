//! The client side of the ME tests: users' keys, echo packets the fake ME
//! answers, a scripted classic client and bounded waits.

use super::KEY_HEX;
use mtgate_proto::obfs2::ProtoTag;
pub use mtgate_testkit::conf::key_from_hex as key;
use mtgate_testkit::{ClientMode, ObfsClient};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Bound on a client's connect.
pub const T: Duration = Duration::from_secs(30);

/// A DC address nothing listens on (direct mode must not be used).
pub fn dead_dc() -> SocketAddr {
    "127.0.0.1:1".parse().unwrap()
}

/// An "encrypted" MTProto packet (non-zero auth_key_id) that the fake ME echoes.
pub fn echo_packet(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    mtgate_crypto::fill_random(&mut p);
    p[..8].copy_from_slice(b"\x01\x02\x03\x04\x05\x06\x07\x08");
    p[8..15].copy_from_slice(b"NOTCMD!");
    p
}

/// A classic (intermediate) client of `user` (a key in hex) toward `dc`.
pub async fn classic_as(proxy: SocketAddr, user: &str, dc: i16) -> ObfsClient {
    tokio::time::timeout(
        T,
        ObfsClient::connect(
            proxy,
            &key(user),
            ClientMode::Classic(ProtoTag::Intermediate),
            dc,
        ),
    )
    .await
    .expect("connect in time")
    .expect("connect")
}

/// A classic client of the default user ([`KEY_HEX`]).
pub async fn classic(proxy: SocketAddr, dc: i16) -> ObfsClient {
    classic_as(proxy, KEY_HEX, dc).await
}

/// Sends an echo packet and waits (bounded) for the same bytes back.
pub async fn echo_once(
    c: &mut ObfsClient,
    len: usize,
    limit: Duration,
) -> Result<Duration, String> {
    let p = echo_packet(len);
    let t = Instant::now();
    c.send_frame(&p).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(limit, c.recv_frame()).await {
        Ok(Ok(back)) if back == p => Ok(t.elapsed()),
        Ok(Ok(back)) => Err(format!("wrong answer ({} bytes)", back.len())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {limit:?}")),
    }
}

/// Polls `f` every 20 ms until it holds or `limit` passes.
pub async fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
