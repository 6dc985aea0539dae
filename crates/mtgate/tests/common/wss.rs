//! A `wss://` WebSocket endpoint on loopback in front of a fake DC, with its
//! own certificate (Telegram's `/apiws` endpoints, for the WebSocket upstream).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// A `wss://` endpoint for `names` in front of `dc`; records each upgrade's
/// host, path and protocol.
pub struct WssDc {
    pub addr: SocketAddr,
    pub pem: String,
    pub seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

// tungstenite's handshake callback returns its (large) error response type.
#[allow(clippy::result_large_err)]
pub async fn wss_dc(names: &[&str], dc: SocketAddr) -> WssDc {
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
