//! The WebSocket upstream (issue 14) over real loopback sockets: with
//! `[upstream.websocket]`, mtgate reaches a DC through a `wss://…/apiws`
//! endpoint (a local TLS WebSocket server with its own certificate, in front
//! of the fake DC) instead of the DC's TCP address, which is dead here.

mod common;

use common::{key, Proxy, KEY_HEX};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A `wss://` endpoint for `names` in front of `dc`; records each upgrade's
/// host, path and protocol.
struct WssDc {
    addr: SocketAddr,
    pem: String,
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

// tungstenite's handshake callback returns its (large) error response type.
#[allow(clippy::result_large_err)]
async fn wss_dc(names: &[&str], dc: SocketAddr) -> WssDc {
    let cert =
        rcgen::generate_simple_self_signed(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let pem = cert.cert.pem();
    let der = rustls::pki_types::CertificateDer::from(cert.cert.der().to_vec());
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.key_pair.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![der], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let (acceptor, rec) = (acceptor.clone(), rec.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let rec2 = rec.clone();
                let cb = move |req: &Request, mut resp: Response| {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    rec2.lock().unwrap().push((
                        h("host"),
                        req.uri().path().to_owned(),
                        h("sec-websocket-protocol"),
                    ));
                    resp.headers_mut()
                        .insert("Sec-WebSocket-Protocol", "binary".parse().unwrap());
                    Ok(resp)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, cb).await else {
                    return;
                };
                let tcp = TcpStream::connect(dc).await.unwrap();
                mtgate::net::websocket::pump(ws, tcp).await;
            });
        }
    });
    WssDc { addr, pem, seen }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_connections_go_through_the_websocket_endpoint() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test", "venus-1.test"], dc.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &wss.pem).unwrap();
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream.websocket]\nenabled = true\nhosts = {{ \"2\" = \"venus.test\" }}\n\
         resolve = {{ \"venus.test\" = \"{a}\", \"venus-1.test\" = \"{a}\" }}\nca_file = \"{}\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        ca.display(),
        a = wss.addr
    );
    // Every DC's TCP address is dead: only the WebSocket way works.
    let proxy =
        Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await;
    for dc_index in [2i16, -2] {
        let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, dc_index)
            .await
            .expect("connect");
        tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi())
            .await
            .expect("in time")
            .expect("resPQ through the WebSocket upstream");
    }
    assert_eq!(dc.stats().res_pq, 2);
    let seen = wss.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[0],
        ("venus.test".into(), "/apiws".into(), "binary".into())
    );
    assert_eq!(seen[1].0, "venus-1.test", "media DCs use the -1 name");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test"], dc.local_addr()).await;
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
         [upstream.websocket]\nenabled = true\nhosts = {{ \"2\" = \"venus.test\" }}\n\
         resolve = {{ \"venus.test\" = \"{}\" }}\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
        wss.addr
    );
    let proxy =
        Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await;
    let mut c = ObfsClient::connect(proxy.addr, &key(), ClientMode::Secure, 2)
        .await
        .expect("connect");
    let r = tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "no DC answer without a trusted certificate"
    );
    assert_eq!(dc.stats().res_pq, 0);
    assert!(
        wss.seen.lock().unwrap().is_empty(),
        "no upgrade past a failed TLS"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_fallback_mode_the_endpoint_serves_only_when_tcp_fails() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let wss = wss_dc(&["venus.test"], dc.local_addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &wss.pem).unwrap();
    let toml = || {
        format!(
            "[tls]\ndomains = [\"mask.test\"]\nfronting = false\nlearn_profile = false\n\
             [upstream.websocket]\nenabled = true\nmode = \"fallback\"\nhosts = {{ \"2\" = \"venus.test\" }}\n\
             resolve = {{ \"venus.test\" = \"{}\" }}\nca_file = \"{}\"\n\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n",
            wss.addr,
            ca.display()
        )
    };
    let resp = |addr| async move {
        let mut c = ObfsClient::connect(addr, &key(), ClientMode::Secure, 2)
            .await
            .expect("connect");
        matches!(
            tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi()).await,
            Ok(Ok(_))
        )
    };
    // TCP to the DC works: the endpoint is not used.
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml(), &[dc.local_addr()]).await;
    assert!(resp(proxy.addr).await);
    assert!(wss.seen.lock().unwrap().is_empty());
    proxy.stop().await;
    // TCP is dead: the endpoint serves.
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml(), &[dead]).await;
    assert!(resp(proxy.addr).await);
    assert_eq!(wss.seen.lock().unwrap().len(), 1);
    proxy.stop().await;
}
