//! The WebSocket inbound transport (issue 14) over real loopback sockets:
//! clients reach the fake DC through binary WebSocket messages on
//! `[websocket] path`; anything else on that port gets a web server's answer;
//! a trusted CDN's `X-Forwarded-For` names the client the policy sees.

mod common;

use common::{key, Proxy, DOMAIN, KEY_HEX};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn start(dc: &FakeDc) -> Proxy {
    let toml = format!(
        "[tls]\ndomains = [\"{DOMAIN}\"]\nmask_host = \"127.0.0.1:1\"\nlearn_profile = false\n\
         [websocket]\nlisten = [\"127.0.0.1:0\"]\npath = \"/apiws\"\n\
         [proxy_protocol]\ntrusted = [\"127.0.0.1\"]\n\
         [policy]\nrefuse_action = \"close\"\n\
         [policy.acl]\nrules = [ {{ cidr = \"203.0.113.0/24\", level = \"blocked\" }} ]\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\", \"ee\"]\n"
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await
}

/// A local TCP port whose connections are carried to `ws` as WebSocket
/// binary messages (what a browser-side client or websockify does), from
/// `from`, with `forwarded_for` as `X-Forwarded-For` if given.
async fn ws_bridge(
    ws: SocketAddr,
    from: &'static str,
    forwarded_for: Option<&'static str>,
) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            tokio::spawn(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.bind(SocketAddr::new(from.parse().unwrap(), 0))
                    .unwrap();
                let up = sock.connect(ws).await.unwrap();
                let mut req = format!("ws://{ws}/apiws").into_client_request().unwrap();
                req.headers_mut()
                    .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
                if let Some(x) = forwarded_for {
                    req.headers_mut()
                        .insert("X-Forwarded-For", x.parse().unwrap());
                }
                let Ok((wss, resp)) = tokio_tungstenite::client_async(req, up).await else {
                    return;
                };
                assert_eq!(
                    resp.headers()
                        .get("Sec-WebSocket-Protocol")
                        .map(|v| v.as_bytes()),
                    Some(&b"binary"[..])
                );
                mtgate::net::websocket::pump(wss, tcp).await;
            });
        }
    });
    addr
}

async fn works(bridge: SocketAddr, mode: ClientMode) -> bool {
    match ObfsClient::connect(bridge, &key(), mode, 2).await {
        Ok(mut c) => matches!(
            tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await,
            Ok(Ok(_))
        ),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_reach_the_dc_over_websocket() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = start(&dc).await;
    let bridge = ws_bridge(proxy.ws[0], "127.0.0.2", None).await;
    assert!(works(bridge, ClientMode::Secure).await, "dd over WebSocket");
    let tls = ClientMode::FakeTls {
        domain: DOMAIN.to_string(),
    };
    assert!(works(bridge, tls).await, "ee over WebSocket");
    assert_eq!(dc.stats().res_pq, 2);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anything_but_an_upgrade_gets_a_web_answer() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = start(&dc).await;
    for (req, status) in [
        ("GET / HTTP/1.1\r\nHost: x\r\n\r\n", "404"),
        ("GET /apiws HTTP/1.1\r\nHost: x\r\n\r\n", "400"),
        (
            "POST /apiws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            "405",
        ),
    ] {
        let mut s = TcpStream::connect(proxy.ws[0]).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
            .await
            .expect("answered and closed")
            .unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")) && text.contains("Server: nginx"),
            "{req:?} -> {text}"
        );
    }
    // Obfuscated2 bytes straight on the WebSocket port: not HTTP, a 400.
    let mut s = TcpStream::connect(proxy.ws[0]).await.unwrap();
    s.write_all(&[0xef; 64]).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        out.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(dc.stats().accepted, 0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_cdn_names_the_client_with_x_forwarded_for() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = start(&dc).await;
    // From the trusted CDN (127.0.0.1): the named client is what the ACL sees.
    let blocked = ws_bridge(proxy.ws[0], "127.0.0.1", Some("10.1.1.1, 203.0.113.9")).await;
    assert!(
        !works(blocked, ClientMode::Secure).await,
        "blocked client refused"
    );
    let allowed = ws_bridge(proxy.ws[0], "127.0.0.1", Some("198.51.100.9")).await;
    assert!(works(allowed, ClientMode::Secure).await);
    // From an untrusted peer the header is ignored.
    let untrusted = ws_bridge(proxy.ws[0], "127.0.0.2", Some("203.0.113.9")).await;
    assert!(works(untrusted, ClientMode::Secure).await);
    proxy.stop().await;
}
