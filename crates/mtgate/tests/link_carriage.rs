//! The link's carriages (issue 15) over real loopback sockets: TLS that
//! looks like any HTTPS server (rustls, a certificate of its own), WebSocket
//! with and without TLS, and WebSocket through a real nginx standing in for
//! a CDN edge. Whatever is not a link gets a web server's answer.

mod common;

use common::link::{bridge, exit_with, res_pq, rig, Rig};
use common::nginx::Nginx;
use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::Cipher;
use mtgate_testkit::fake_dc::FakeDcMode;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A certificate for `name` in `dir`: (cert file, key file, DER).
fn cert(dir: &Path, name: &str) -> (String, String, rustls::pki_types::CertificateDer<'static>) {
    let made = rcgen::generate_simple_self_signed(vec![name.into()]).unwrap();
    let (c, k) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&c, made.cert.pem()).unwrap();
    std::fs::write(&k, made.key_pair.serialize_pem()).unwrap();
    (
        c.display().to_string(),
        k.display().to_string(),
        made.cert.der().clone(),
    )
}

/// Sends `request` over `s` and reads the answer until close.
async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut s: S,
    request: &[u8],
) -> String {
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carriage_carries_sessions_and_answers_browsers_like_a_site() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, der) = cert(dir.path(), "exit.test");
    let Rig {
        dc,
        mask,
        key,
        token,
        ..
    } = rig(FakeDcMode::Mtproto).await;
    let tls = format!("carriage = \"tls\"\ntls_cert = \"{c}\"\ntls_key = \"{k}\"");
    let x = exit_with(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
        &tls,
    )
    .await;
    let link = x.link.unwrap();
    let ca = dir.path().join("exit.test.pem");
    let b = bridge(
        link,
        &key.public(),
        &token,
        &Cipher::ALL,
        &format!(
            "carriage = \"tls\"\nserver_name = \"exit.test\"\nca_file = \"{}\"",
            ca.display()
        ),
    )
    .await;
    for _ in 0..3 {
        res_pq(b.addr).await.expect("through the TLS carriage");
    }
    let links = x.runtime.link_stats.exit.established.load(Relaxed);
    assert!(links >= 1);
    // A browser gets the certificate and a web server's answer.
    let cfg = common::tls::client_config(&der, &[b"http/1.1"]);
    let s = common::tls::connect(link, "exit.test", cfg, None)
        .await
        .expect("TLS as any HTTPS site");
    let answer = exchange(s, b"GET / HTTP/1.1\r\nHost: exit.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404 Not Found"), "{answer}");
    assert!(answer.contains("nginx"));
    // A bridge that does not trust the certificate gets no link.
    let other = bridge(
        link,
        &key.public(),
        &token,
        &Cipher::ALL,
        "carriage = \"tls\"\nserver_name = \"exit.test\"",
    )
    .await;
    assert!(res_pq(other.addr).await.is_err());
    assert_eq!(x.runtime.link_stats.exit.established.load(Relaxed), links);
    assert!(other.runtime.link_stats.bridge.established.load(Relaxed) == 0);
    other.stop().await;
    b.stop().await;
    x.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carriage_with_and_without_tls() {
    let dir = tempfile::tempdir().unwrap();
    let (c, k, _) = cert(dir.path(), "exit.test");
    let Rig { dc, mask, .. } = rig(FakeDcMode::Mtproto).await;
    let ca = dir.path().join("exit.test.pem");
    for wss in [false, true] {
        let key = ExitKey::generate();
        let token = Token::generate();
        let mut lines = "carriage = \"websocket\"\npath = \"/tunnel\"".to_string();
        if wss {
            lines += &format!("\ntls_cert = \"{c}\"\ntls_key = \"{k}\"");
        }
        let x = exit_with(
            dc.local_addr(),
            &key,
            &[("msk", &token)],
            &Cipher::ALL,
            mask,
            &lines,
        )
        .await;
        let link = x.link.unwrap();
        let mut b_lines = format!("carriage = \"websocket\"\npath = \"/tunnel\"\ntls = {wss}\nserver_name = \"exit.test\"");
        if wss {
            b_lines += &format!("\nca_file = \"{}\"", ca.display());
        }
        let b = bridge(link, &key.public(), &token, &Cipher::ALL, &b_lines).await;
        for _ in 0..3 {
            res_pq(b.addr)
                .await
                .unwrap_or_else(|e| panic!("wss={wss}: {e}"));
        }
        if !wss {
            // A page request on the link port: the web server's 404.
            let s = tokio::net::TcpStream::connect(link).await.unwrap();
            let answer = exchange(s, b"GET /index.html HTTP/1.1\r\nHost: exit.test\r\n\r\n").await;
            assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
        }
        b.stop().await;
        x.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carriage_through_an_nginx_cdn_edge() {
    let Rig {
        dc,
        mask,
        key,
        token,
        ..
    } = rig(FakeDcMode::Mtproto).await;
    // The exit is a plain ws:// origin; the edge terminates TLS.
    let x = exit_with(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
        "carriage = \"websocket\"",
    )
    .await;
    let edge = Nginx::cdn("cdn.test", "/link", x.link.unwrap());
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("edge.pem");
    std::fs::write(&ca, &edge.cert_pem).unwrap();
    let b = bridge(
        edge.addr,
        &key.public(),
        &token,
        &Cipher::ALL,
        &format!(
            "carriage = \"websocket\"\nserver_name = \"cdn.test\"\nca_file = \"{}\"",
            ca.display()
        ),
    )
    .await;
    for _ in 0..3 {
        res_pq(b.addr).await.expect("through the edge");
    }
    assert!(x.runtime.link_stats.exit.established.load(Relaxed) >= 1);
    assert!(x.runtime.link_stats.exit.streams.load(Relaxed) >= 3);
    b.stop().await;
    x.stop().await;
}
