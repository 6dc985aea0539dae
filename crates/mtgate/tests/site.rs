//! The own site (issue 25) over real loopback sockets: on mtgate's client
//! port, a TLS hello for the site's host is answered with the site's own
//! certificate and pages (HTTP/1.1 and HTTP/2 by ALPN), while FakeTLS
//! clients of the same host name are served by the proxy on the same port.
//! Garbage and plain HTTP get a web server's answers. A certificate replaced
//! on disk is picked up by new connections without dropping open ones.

mod common;

use common::{key, Proxy, KEY_HEX};
use http_body_util::{BodyExt, Empty};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "site.test";

/// A certificate for `HOST` written to `dir` as `site.pem` / `site.key`.
fn write_cert(dir: &Path) -> CertificateDer<'static> {
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    std::fs::write(dir.join("site.pem.tmp"), made.cert.pem()).unwrap();
    std::fs::write(dir.join("site.key.tmp"), made.key_pair.serialize_pem()).unwrap();
    std::fs::rename(dir.join("site.key.tmp"), dir.join("site.key")).unwrap();
    std::fs::rename(dir.join("site.pem.tmp"), dir.join("site.pem")).unwrap();
    made.cert.der().clone()
}

use common::tls::Tls;

/// A TLS connection to `addr` for `HOST` trusting `root`, offering `alpn`.
async fn tls(addr: SocketAddr, root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Tls {
    common::tls::connect(addr, HOST, common::tls::client_config(root, alpn), None)
        .await
        .expect("TLS to the site with its certificate")
}

/// [`tls`] (HTTP/1.1) from the loopback address `from`.
async fn tls_from(from: &str, addr: SocketAddr, root: &CertificateDer<'static>) -> Tls {
    let cfg = common::tls::client_config(root, &[b"http/1.1"]);
    common::tls::connect(addr, HOST, cfg, Some(from))
        .await
        .expect("TLS to the site")
}

/// `GET path` over HTTP/1.1 on `sender`: status and body.
async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    path: &str,
) -> (u16, String) {
    let req = hyper::Request::get(path)
        .header("host", HOST)
        .body(Empty::new())
        .unwrap();
    // The connection takes a moment to be ready again after an answer.
    sender.ready().await.expect("connection ready");
    let r = sender.send_request(req).await.expect("answer");
    let status = r.status().as_u16();
    let body = r.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn http1(stream: Tls) -> hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>> {
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

struct Lab {
    proxy: Proxy,
    _dc: FakeDc,
    dir: tempfile::TempDir,
    cert: CertificateDer<'static>,
}

async fn lab() -> Lab {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("index.html"), "<h1>hello from the site</h1>").unwrap();
    std::fs::write(
        www.join("style.css"),
        "body{} /* the site's style body */ body",
    )
    .unwrap();
    let toml = format!(
        "[site]\nhosts = [\"{HOST}\"]\ndir = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n",
        www.display(),
        dir.path().join("site.pem").display(),
        dir.path().join("site.key").display(),
    );
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
    Lab {
        proxy,
        _dc: dc,
        dir,
        cert,
    }
}

async fn ee_client(addr: SocketAddr) -> ObfsClient {
    let mode = ClientMode::FakeTls {
        domain: HOST.into(),
    };
    let mut c = ObfsClient::connect(addr, &key(), mode, 2)
        .await
        .expect("ee");
    c.echo_round_trip(b"through the proxy", Duration::from_secs(5))
        .await
        .expect("echo");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_port_serves_the_site_and_the_proxy() {
    let lab = lab().await;
    let addr = lab.proxy.addr;
    // A browser-like client: the site's certificate, its pages, a 404.
    let mut s = http1(tls(addr, &lab.cert, &[b"http/1.1"]).await).await;
    assert_eq!(
        get(&mut s, "/").await,
        (200, "<h1>hello from the site</h1>".into())
    );
    assert_eq!(get(&mut s, "/style.css").await.0, 200);
    let (status, body) = get(&mut s, "/missing").await;
    assert_eq!(status, 404);
    assert!(body.contains("404 Not Found"), "{body}");
    // HTTP/2 is offered by ALPN.
    let t = tls(addr, &lab.cert, &[b"h2", b"http/1.1"]).await;
    assert_eq!(t.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    // FakeTLS clients of the same host name use the same port.
    let mut c = ee_client(addr).await;
    // Plain HTTP on the port: the 400 web servers give.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request"), "{answer}");
    // Garbage: the site's TLS server ends it (an alert, then a close).
    let mut junk = TcpStream::connect(addr).await.unwrap();
    junk.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "closed by the site");
    c.echo_round_trip(b"still here", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(
        lab.proxy
            .counters
            .fronted
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 3
    );
    lab.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_replaced_on_disk_is_used_by_new_connections_only() {
    let lab = lab().await;
    let addr = lab.proxy.addr;
    let mut old = http1(tls(addr, &lab.cert, &[b"http/1.1"]).await).await;
    assert_eq!(get(&mut old, "/").await.0, 200);
    let mut client = ee_client(addr).await;
    let new_cert = write_cert(lab.dir.path());
    // New connections see the new certificate within the watch interval.
    let mut seen = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let cfg = common::tls::client_config(&new_cert, &[]);
        let r = common::tls::connect(addr, HOST, cfg, None).await;
        if r.is_ok() {
            seen = true;
            break;
        }
    }
    assert!(seen, "the new certificate is served");
    // Neither the open site connection nor the proxy client was dropped.
    assert_eq!(get(&mut old, "/").await.0, 200);
    client
        .echo_round_trip(b"after the swap", Duration::from_secs(5))
        .await
        .unwrap();
    lab.proxy.stop().await;
}

/// A raw HTTP/1.1 exchange over TLS for `HOST`: the answer's head and body.
async fn raw_get(addr: SocketAddr, root: &CertificateDer<'static>, request: &str) -> String {
    let mut t = tls(addr, root, &[b"http/1.1"]).await;
    t.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_answer_conditional_and_range_requests() {
    let lab = lab().await;
    let addr = lab.proxy.addr;
    let head = |extra: &str| {
        format!("GET /style.css HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n{extra}\r\n")
    };
    let full = raw_get(addr, &lab.cert, &head("")).await;
    assert!(full.starts_with("HTTP/1.1 200"), "{full}");
    assert!(
        full.to_lowercase().contains("content-type: text/css"),
        "{full}"
    );
    let modified = full
        .lines()
        .find_map(|l| l.strip_prefix("last-modified: "))
        .expect("last-modified")
        .to_owned();
    let again = raw_get(
        addr,
        &lab.cert,
        &head(&format!("If-Modified-Since: {modified}\r\n")),
    )
    .await;
    assert!(again.starts_with("HTTP/1.1 304"), "{again}");
    let part = raw_get(addr, &lab.cert, &head("Range: bytes=0-3\r\n")).await;
    assert!(part.starts_with("HTTP/1.1 206"), "{part}");
    assert!(part.ends_with("body"), "{part}");
    lab.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_site_can_be_a_local_application_behind_mtgate() {
    // A local web application: answers with the path and the Host it saw.
    let app = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = app.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let hd = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|h| h.to_str().ok())
                                .unwrap_or("")
                                .to_owned()
                        };
                        let (host, proto, xff) =
                            (hd("host"), hd("x-forwarded-proto"), hd("x-forwarded-for"));
                        let body =
                            format!("app saw {} {} via {} for {}", req.uri(), host, proto, xff);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(body)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = write_cert(dir.path());
    let toml = format!(
        "[site]\nhosts = [\"{HOST}\"]\nupstream = \"http://{app_addr}\"\ncert = \"{}\"\nkey = \"{}\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n",
        dir.path().join("site.pem").display(),
        dir.path().join("site.key").display(),
    );
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
    let mut s = http1(tls_from("127.0.0.9", proxy.addr, &cert).await).await;
    assert_eq!(
        get(&mut s, "/login?next=%2F").await,
        // The client's own address (here 127.0.0.9), not mtgate's hop.
        (
            200,
            format!("app saw /login?next=%2F {HOST} via https for 127.0.0.9")
        )
    );
    ee_client(proxy.addr).await;
    proxy.stop().await;
    // No application there: a web server's 502.
    let toml = toml.replace(&app_addr.to_string(), "127.0.0.1:1");
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
    let mut s = http1(tls(proxy.addr, &cert, &[b"http/1.1"]).await).await;
    let (status, body) = get(&mut s, "/").await;
    assert_eq!(status, 502);
    assert!(body.contains("502 Bad Gateway"), "{body}");
    proxy.stop().await;
}
