//! The admin listener over TLS, and what it takes over plain HTTP: with
//! `[admin] tls_cert`/`tls_key` the real binary speaks HTTPS only (the API
//! answers a trusted rustls client; plain HTTP gets no answer); over plain
//! HTTP a credential is taken only from loopback, while `/metrics` and
//! `/health` answer anyone; bad TLS settings are clear errors.

mod common;

use common::admin_http::TOKEN;
use mtgate::admin::{serve_conn, AdminState, Metrics};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_mtgate");

/// One request over `io`; the whole answer.
async fn exchange<S>(mut io: S, head: &str) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    io.write_all(head.as_bytes()).await.expect("send");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn get(path: &str, bearer: Option<&str>) -> String {
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: admin.test\r\n{auth}Connection: close\r\n\r\n")
}

/// One request to an in-process admin connection from `peer` over plain HTTP.
async fn plain_from(peer: &str, head: &str) -> String {
    let state = AdminState::new(Arc::new(Metrics::new(["alice"])));
    let (client, server) = tokio::io::duplex(64 * 1024);
    let peer: SocketAddr = peer.parse().expect("peer");
    let task = tokio::spawn(serve_conn(server, peer, state, false));
    let answer = exchange(client, head).await;
    task.abort();
    answer
}

#[tokio::test]
async fn plain_http_takes_credentials_only_from_loopback() {
    for path in ["/api/v1/whoami", "/console", "/console/login"] {
        let far = plain_from("203.0.113.5:40000", &get(path, Some(TOKEN))).await;
        assert!(far.starts_with("HTTP/1.1 403"), "{path}: {far}");
        assert!(far.contains("over TLS only, or from loopback"), "{far}");
        // From loopback the request reaches its handler (no API here: 404).
        let near = plain_from("127.0.0.1:40000", &get(path, Some(TOKEN))).await;
        assert!(near.starts_with("HTTP/1.1 404"), "{path}: {near}");
    }
    let reload =
        "POST /reload HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    assert!(plain_from("[2001:db8::1]:40000", reload)
        .await
        .starts_with("HTTP/1.1 403"));
    for path in ["/metrics", "/health/live"] {
        let far = plain_from("203.0.113.5:40000", &get(path, None)).await;
        assert!(far.starts_with("HTTP/1.1 200"), "{path}: {far}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_the_api_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["admin.test".into()]).unwrap();
    let (cert, key) = (dir.path().join("admin.pem"), dir.path().join("admin.key"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.key_pair.serialize_pem()).unwrap();
    let port = common::free_port().port();
    let config = |tls: &str| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nstate_dir = \"{}\"\nwatch_config = false\n\
             [tls]\ndomains = [\"mask.test\"]\nmask_host = \"127.0.0.1:1\"\nfronting = false\nlearn_profile = false\n\
             [admin]\nlisten = \"127.0.0.1:{port}\"\ntoken = \"{TOKEN}\"\n{tls}\n\
             [users.alice]\nsecret = \"7d1f0c9a5be24e3186a0f4c2d9b8e617\"\n",
            dir.path().display()
        )
    };
    let path = dir.path().join("mtgate.toml");
    let tls = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        key.display()
    );
    std::fs::write(&path, config(&tls)).unwrap();
    let proxy = common::MtgateProcess::spawn(&path, dir.path(), std::process::Stdio::null());
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let root = made.cert.der().clone();
    let cfg = common::tls::client_config(&root, &[b"http/1.1"]);
    // The admin server starts with the process; give it a moment to bind.
    let mut answer = String::new();
    for _ in 0..50 {
        if let Ok(s) = common::tls::connect(addr, "admin.test", cfg.clone(), None).await {
            answer = exchange(s, &get("/api/v1/whoami", Some(TOKEN))).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"superuser\""), "{answer}");
    let s = common::tls::connect(addr, "admin.test", cfg.clone(), None)
        .await
        .expect("tls");
    let health = exchange(s, &get("/health/live", None)).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let s = tokio::net::TcpStream::connect(addr).await.expect("tcp");
    let plain = exchange(s, &get("/health/live", None)).await;
    assert!(!plain.contains("HTTP/1.1"), "{plain}");
    drop(proxy);

    // Half a pair, and a key file that is not one: clear errors.
    std::fs::write(&path, config(&format!("tls_cert = \"{}\"", cert.display()))).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("admin.tls_cert"),
        "{err}"
    );
    let bad = format!(
        "tls_cert = \"{}\"\ntls_key = \"{}\"",
        cert.display(),
        cert.display()
    );
    std::fs::write(&path, config(&bad)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["run", "--no-qr", "--config"])
        .arg(&path)
        .env("HOME", dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("admin.tls_key"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
