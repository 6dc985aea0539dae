//! PROXY protocol (issue 14) over real loopback sockets: a trusted front end
//! (127.0.0.2 here) sends a v1 or v2 header, and the client address in it is
//! what the policy sees; a header from an untrusted source is a bad handshake
//! (fronted to the mask site); a trusted front end without a header is
//! closed; a front end's own LOCAL connection is served as itself.

mod common;

use common::{MaskSite, Proxy, KEY_HEX};
use mtgate::net::proxy_protocol::{v1_header, v2_header};
use mtgate_testkit::client::{ClientMode, ClientOptions};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONT: &str = "127.0.0.2";

async fn dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("fake dc")
}

/// mtgate trusting 127.0.0.2, with an ACL that blocks 203.0.113.0/24 (the
/// "real clients" behind the front end) and `mask` as the mask site.
async fn start(dc: &FakeDc, mask: SocketAddr) -> Proxy {
    let toml = format!(
        "[tls]\ndomains = [\"mask.test\"]\nmask_host = \"{mask}\"\nlearn_profile = false\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n\
         [proxy_protocol]\ntrusted = [\"{FRONT}/32\"]\nheader_timeout = \"1s\"\n\
         [policy]\nrefuse_action = \"close\"\n\
         [policy.acl]\nrules = [ {{ cidr = \"203.0.113.0/24\", level = \"blocked\" }} ]\n"
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await
}

/// A dd client from `from`, `preamble` first; true when its round trip
/// through the proxy to the fake DC succeeds.
async fn round_trip(proxy: SocketAddr, from: &str, preamble: Vec<u8>) -> bool {
    let opts = ClientOptions {
        bind: Some(from.parse().unwrap()),
        io_timeout: Duration::from_secs(3),
        preamble,
        ..Default::default()
    };
    common::resolves_with(proxy, ClientMode::Secure, opts).await
}

fn client(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_front_end_names_the_client_the_policy_sees() {
    let dc = dc().await;
    let site = MaskSite::start(Duration::from_secs(5)).await;
    let proxy = start(&dc, site.addr).await;
    let local = proxy.addr;

    // v1 and v2 headers for an allowed client: served.
    let ok = client("198.51.100.9:40000");
    assert!(round_trip(local, FRONT, v1_header(ok, local)).await, "v1");
    assert!(round_trip(local, FRONT, v2_header(ok, local)).await, "v2");
    let ok6 = client("[2001:db8::9]:40000");
    assert!(
        round_trip(local, FRONT, v2_header(ok6, local)).await,
        "v2 IPv6"
    );

    // The same front end vouching for a blocked client: refused by the ACL,
    // so the policy saw the client, not the front end.
    let refused_before = proxy.counters.policy_refused.load(Relaxed);
    let blocked = client("203.0.113.7:40000");
    assert!(!round_trip(local, FRONT, v1_header(blocked, local)).await);
    assert!(!round_trip(local, FRONT, v2_header(blocked, local)).await);
    assert_eq!(
        proxy.counters.policy_refused.load(Relaxed) - refused_before,
        2,
        "both refusals counted"
    );
    // ... and the front end itself is not blocked for it.
    assert!(round_trip(local, FRONT, v2_header(ok, local)).await);

    // A direct client (not a trusted source) is served as itself.
    assert!(round_trip(local, "127.0.0.1", Vec::new()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_ends_own_local_connection_is_served_as_itself() {
    let dc = dc().await;
    let site = MaskSite::start(Duration::from_secs(5)).await;
    let proxy = start(&dc, site.addr).await;
    let mut local = v2_header(client("203.0.113.7:1"), proxy.addr);
    local[12] = 0x20; // LOCAL: the addresses are ignored
    assert!(round_trip(proxy.addr, FRONT, local).await);
    assert!(round_trip(proxy.addr, FRONT, b"PROXY UNKNOWN\r\n".to_vec()).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_from_an_untrusted_source_is_a_bad_handshake() {
    let dc = dc().await;
    let site = MaskSite::start(Duration::from_secs(5)).await;
    let proxy = start(&dc, site.addr).await;
    // From 127.0.0.1 (not trusted), a header for an allowed client: the
    // header is not a handshake, so the connection is fronted.
    let fronted_before = proxy.counters.fronted.load(Relaxed);
    assert!(
        !round_trip(
            proxy.addr,
            "127.0.0.1",
            v1_header(client("198.51.100.9:4"), proxy.addr)
        )
        .await
    );
    assert_eq!(proxy.counters.fronted.load(Relaxed), fronted_before + 1);
    assert_eq!(proxy.counters.authenticated.load(Relaxed), 0);
    assert_eq!(dc.stats().res_pq, 0, "nothing reached the DC");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_front_end_without_a_valid_header_is_closed() {
    let dc = dc().await;
    let site = MaskSite::start(Duration::from_secs(5)).await;
    let proxy = start(&dc, site.addr).await;
    // A handshake with no header from the trusted front end.
    assert!(!round_trip(proxy.addr, FRONT, Vec::new()).await);
    // Garbage, a v1 header without its CRLF, silence: each closed without a
    // byte of answer, within the header timeout.
    for bytes in [
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        [b"PROXY TCP4 ".as_slice(), &[b'9'; 120]].concat(),
        Vec::new(),
    ] {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(FRONT.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        let mut s = sock.connect(proxy.addr).await.unwrap();
        s.write_all(&bytes).await.unwrap();
        let mut buf = [0u8; 64];
        let r = tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await;
        assert!(
            matches!(r, Ok(Ok(0)) | Ok(Err(_))),
            "closed silently after {:?}: {r:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(20)])
        );
    }
    assert_eq!(proxy.counters.authenticated.load(Relaxed), 0);
    assert_eq!(proxy.counters.fronted.load(Relaxed), 0, "nothing fronted");
}

/// A plain TCP "mask site" that records what each connection sent until it
/// closes (a site behind `proxy_protocol on;` would read the header first).
async fn recorder() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                while let Ok(Ok(n)) =
                    tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await
                {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = tx.send(got);
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fronted_clients_are_announced_to_the_mask_host_when_asked() {
    let dc = dc().await;
    let (mask, mut seen) = recorder().await;
    for (version, front_named) in [("v1", false), ("v2", true)] {
        let toml = format!(
            "[tls]\ndomains = [\"mask.test\"]\nmask_host = \"{mask}\"\nlearn_profile = false\nmask_preconnect = false\n\
             [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n\
             [proxy_protocol]\ntrusted = [\"{FRONT}\"]\nmask = \"{version}\"\n"
        );
        let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
        let named = client("198.51.100.9:40000");
        let (from, preamble) = if front_named {
            (FRONT, v2_header(named, proxy.addr))
        } else {
            ("127.0.0.1", Vec::new())
        };
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
            .unwrap();
        let mut s = sock.connect(proxy.addr).await.unwrap();
        let me = s.local_addr().unwrap();
        let probe = b"GET / HTTP/1.1\r\nHost: mask.test\r\n\r\n";
        s.write_all(&[preamble.as_slice(), probe].concat())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await
            .expect("the mask host saw the connection")
            .expect("recorded");
        let who = if front_named { named } else { me };
        let header = match version {
            "v1" => v1_header(who, proxy.addr),
            _ => v2_header(who, proxy.addr),
        };
        assert_eq!(
            got,
            [header.as_slice(), probe].concat(),
            "{version}: the header, then the client's bytes exactly"
        );
        assert_eq!(proxy.counters.fronted.load(Relaxed), 1);
        proxy.stop().await;
    }
}
