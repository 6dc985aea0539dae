//! Real clients for end-to-end tests.

use mtgate_testkit::client::{ClientMode, ClientOptions, ObfsClient};
use mtgate_testkit::conf::key_from_hex;
use std::net::SocketAddr;
use std::time::Duration;

/// A `dd` client of `secret` (32 hex digits) through `proxy`, from the
/// loopback address `from` and with the header's 64 random bytes `init`
/// when given, that relays a 64-byte round trip (the DC echoes); `None`
/// when it is refused or does not relay.
pub async fn dd_relays(
    proxy: SocketAddr,
    secret: &str,
    from: Option<&str>,
    init: Option<[u8; 64]>,
) -> Option<ObfsClient> {
    let opts = ClientOptions {
        bind: from.map(|f| f.parse().expect("ip")),
        io_timeout: Duration::from_secs(3),
        init,
        ..ClientOptions::default()
    };
    let mut c = ObfsClient::connect_with(proxy, &key_from_hex(secret), ClientMode::Secure, 2, opts)
        .await
        .ok()?;
    let probe: Vec<u8> = (0..64u8).collect();
    let round = async {
        c.send_raw(&probe).await?;
        c.recv_exact(probe.len()).await
    };
    let ok = matches!(
        tokio::time::timeout(Duration::from_secs(3), round).await,
        Ok(Ok(v)) if v == probe
    );
    ok.then_some(c)
}
