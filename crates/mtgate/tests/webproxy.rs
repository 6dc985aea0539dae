//! Telegram's WEB proxy type (issue 26) on the own site, over real sockets:
//! a client written from the protocol (bridge page → bootstrap token →
//! session → the `websocket` carrier) opens streams whose obfuscated2 `dd`
//! traffic reaches the fake DC through mtgate; and every request that does
//! not authenticate gets exactly what the site gives. Every carrier, and
//! the faults each recovers from: `webproxy_carriers.rs`.

mod common;

use common::{key, Proxy, KEY_HEX};
use mtgate_proto::webproxy::{self, Kind};
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::time::Duration;

const HOST: &str = "site.test";

use mtgate_testkit::webproxy::Site;

/// One HTTP/1.1 request (closing the connection): status line, headers, body.
async fn http(addr: SocketAddr, root: &CertificateDer<'static>, req: &[u8]) -> (String, Vec<u8>) {
    Site::new(addr, HOST, root)
        .unwrap()
        .http(req)
        .await
        .unwrap()
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The head without the `date:` line (it differs by the second).
fn undated(head: &str) -> String {
    head.lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("date:"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Lab {
    proxy: Proxy,
    dc: FakeDc,
    cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

async fn lab() -> Lab {
    lab_with("").await
}

/// [`lab`] with more `[site.webproxy]` lines.
async fn lab_with(webproxy: &str) -> Lab {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    std::fs::write(dir.path().join("site.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), made.key_pair.serialize_pem()).unwrap();
    let toml = format!(
        "[site]\nhosts = [\"{HOST}\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [site.webproxy]\nenabled = true\n{webproxy}\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n",
        dir.path().join("site.pem").display(),
        dir.path().join("site.key").display(),
    );
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
    Lab {
        proxy,
        dc,
        cert: made.cert.der().clone(),
        _dir: dir,
    }
}

fn dd_capability() -> String {
    let mut s = vec![0xdd];
    s.extend_from_slice(key().expose());
    webproxy::capability(&s, HOST, None)
}

fn site(lab: &Lab) -> Site {
    Site::new(lab.proxy.addr, HOST, &lab.cert).unwrap()
}

/// The bridge page's bootstrap token (and the page's headers checked).
async fn bootstrap(lab: &Lab, cap: &str) -> Option<String> {
    let (head, token) = site(lab).bootstrap(cap).await.ok()?;
    let head = head.to_lowercase();
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("content-security-policy:"), "{head}");
    Some(token)
}

/// `POST /api/v1/session` with a HELLO: the session token.
async fn session(lab: &Lab, boot: &str) -> (String, Vec<u8>) {
    session_as(lab, boot, "websocket").await
}

/// [`session`], expecting `carrier` in `X-Carrier-Mode`.
async fn session_as(lab: &Lab, boot: &str, carrier: &str) -> (String, Vec<u8>) {
    let (head, token, body) = site(lab).session(boot).await.expect("session");
    assert!(
        head.contains(&format!("x-carrier-mode: {carrier}\r")),
        "{head}"
    );
    (token, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_websocket_carrier_reach_the_dc() {
    let lab = lab().await;
    let boot = bootstrap(&lab, &dd_capability())
        .await
        .expect("bridge page");
    let (token, welcome) = session(&lab, &boot).await;
    let f = webproxy::decode_frames(&welcome).unwrap();
    assert_eq!((f.len(), f[0].kind), (1, Kind::Welcome));
    // A retry with the same bootstrap gets the same session.
    assert_eq!(session(&lab, &boot).await.0, token);
    let bridge = mtgate_testkit::webproxy::bridge(
        site(&lab),
        token,
        mtgate_testkit::webproxy::Carrier::WebSocket,
        Default::default(),
    )
    .await
    .expect("carrier");
    let local = bridge.addr;
    // Two streams at once, each a dd client of its own.
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(
            ObfsClient::connect(local, &key(), ClientMode::Secure, 2)
                .await
                .expect("stream"),
        );
    }
    for c in &mut clients {
        tokio::time::timeout(Duration::from_secs(5), c.req_pq_multi())
            .await
            .expect("in time")
            .expect("resPQ through the WEB proxy");
    }
    assert_eq!(lab.dc.stats().res_pq, 2);
    assert_eq!(
        lab.proxy.runtime.site.as_ref().unwrap().webproxy_sessions(),
        1
    );
    lab.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_do_not_authenticate_get_the_site() {
    let lab = lab().await;
    let addr = lab.proxy.addr;
    let index = http(addr, &lab.cert, &get("/")).await;
    let unknown = http(addr, &lab.cert, &get("/no-such-page")).await;
    // A wrong (well-formed) capability, an extra parameter, HEAD: the index.
    let wrong = webproxy::capability(&[9u8; 16], HOST, None);
    for path in [
        format!("/?bridge={wrong}"),
        format!("/?bridge={}&x=1", dd_capability()),
        "/?bridge=short".to_owned(),
    ] {
        let got = http(addr, &lab.cert, &get(&path)).await;
        assert_eq!(undated(&got.0), undated(&index.0), "{path}");
        assert_eq!(got.1, index.1, "{path}");
    }
    // API calls with a wrong or no token: what the site gives that path.
    let site_answer = |path: &str, method: &str| {
        format!("{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    };
    let bare = http(
        addr,
        &lab.cert,
        site_answer("/api/v1/session", "POST").as_bytes(),
    )
    .await;
    let forged = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {wrong}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let got = http(addr, &lab.cert, forged.as_bytes()).await;
    assert_eq!(undated(&got.0), undated(&bare.0));
    assert_eq!(got.1, bare.1);
    // A live bootstrap with a body that is not a HELLO: the site's answer
    // to the same request without its body (and the bootstrap still good).
    let boot = bootstrap(&lab, &dd_capability())
        .await
        .expect("bridge page");
    let garbage = format!(
        "POST /api/v1/session HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {boot}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
    );
    let got = http(addr, &lab.cert, garbage.as_bytes()).await;
    assert_eq!(undated(&got.0), undated(&bare.0));
    assert_eq!(got.1, bare.1);
    session(&lab, &boot).await;
    // A WebSocket upgrade with a wrong subprotocol: refused as the site refuses it.
    assert!(site(&lab)
        .websocket(&format!("tproxy-v1.{wrong}"))
        .await
        .is_err());
    let ws_path = http(addr, &lab.cert, &get("/api/v1/ws")).await;
    assert_eq!(undated(&ws_path.0), undated(&unknown.0));
    lab.proxy.stop().await;
}
