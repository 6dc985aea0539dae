//! All four carriers of Telegram's WEB proxy type (issue 26), driven by
//! mtgate's own client (the testkit's bridge, written from the spec) over
//! real sockets to an echo DC through mtgate: several streams a session,
//! a stream closed mid-transfer, lost long polls replayed by cursor and
//! uplink bodies retried byte for byte, a WebSocket dropped, and flow
//! control holding a reader that stops reading without anything buffering
//! without bound.

mod common;

use common::{key, Proxy, KEY_HEX};
use mtgate_crypto::{fill_random, AesCtr};
use mtgate_proto::obfs2::{build_header, is_valid_init, DcIndex};
use mtgate_proto::{webproxy, ProtoTag};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use mtgate_testkit::webproxy::{bridge, Bridge, Carrier, Faults, Site};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const HOST: &str = "site.test";
const MIB: usize = 1 << 20;

struct Lab {
    proxy: Proxy,
    dc: FakeDc,
    cert: CertificateDer<'static>,
    _dir: tempfile::TempDir,
}

/// mtgate serving the WEB proxy type over `carrier` in front of an echo DC.
/// (Each `websocket-lanes` stream is a TLS connection of its own that enters
/// through the proxy port like any handshake that is not a client's: the
/// fronting budget gives a source room for one app's `max_streams` lanes.)
async fn lab_for(carrier: Carrier) -> Lab {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec![HOST.to_string()]).unwrap();
    std::fs::write(dir.path().join("site.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("site.key"), made.key_pair.serialize_pem()).unwrap();
    let toml = format!(
        "[site]\nhosts = [\"{HOST}\"]\ncert = \"{}\"\nkey = \"{}\"\n\
         [site.webproxy]\nenabled = true\ncarrier = \"{}\"\n\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n",
        dir.path().join("site.pem").display(),
        dir.path().join("site.key").display(),
        carrier.name(),
    );
    let proxy = Proxy::start_full("127.0.0.1:0", "", &toml, &[dc.local_addr()]).await;
    Lab {
        proxy,
        dc,
        cert: made.cert.der().clone(),
        _dir: dir,
    }
}

impl Lab {
    fn site(&self) -> Site {
        Site::new(self.proxy.addr, HOST, &self.cert).unwrap()
    }

    /// A session (bridge page, bootstrap, HELLO) over `carrier`, bridged.
    async fn bridge(&self, carrier: Carrier, faults: Faults) -> (Bridge, String) {
        let mut dd = vec![0xdd];
        dd.extend_from_slice(key().expose());
        let cap = webproxy::capability(&dd, HOST, None);
        let site = self.site();
        let (_, boot) = site.bootstrap(&cap).await.expect("bridge page");
        let (head, token, _) = site.session(&boot).await.expect("session");
        assert!(
            head.contains(&format!("x-carrier-mode: {}\r", carrier.name())),
            "{head}"
        );
        let b = bridge(site, token.clone(), carrier, faults)
            .await
            .expect("carrier");
        (b, token)
    }

    fn streams_open(&self) -> u64 {
        let site = self.proxy.runtime.site.as_ref().unwrap();
        site.webproxy_stats().unwrap().streams_open.load(Relaxed)
    }

    fn sessions(&self) -> usize {
        self.proxy
            .runtime
            .site
            .as_ref()
            .unwrap()
            .webproxy_sessions()
    }
}

/// A `dd` app connection through the bridge, as raw obfuscated2 halves.
struct App {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    enc: AesCtr,
    dec: AesCtr,
}

async fn app(addr: SocketAddr) -> App {
    let mut init = [0u8; 64];
    while {
        fill_random(&mut init);
        !is_valid_init(&init)
    } {}
    let (header, c) = build_header(&init, ProtoTag::Padded, DcIndex(2), Some(&key()));
    let s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (rd, mut wr) = s.into_split();
    wr.write_all(&header).await.unwrap();
    App {
        rd,
        wr,
        enc: c.enc,
        dec: c.dec,
    }
}

fn pattern(seed: u8, at: usize, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = at + i;
        *b = (x as u8).wrapping_mul(31) ^ ((x >> 9) as u8) ^ seed;
    }
}

/// Writes `total` pattern bytes (counting them in `written`) in the background;
/// the write half comes back in the handle (dropping it closes the stream).
fn send(
    mut wr: OwnedWriteHalf,
    mut enc: AesCtr,
    seed: u8,
    total: usize,
    written: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<OwnedWriteHalf> {
    tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut at = 0;
        while at < total {
            let n = buf.len().min(total - at);
            pattern(seed, at, &mut buf[..n]);
            enc.apply(&mut buf[..n]);
            if wr.write_all(&buf[..n]).await.is_err() {
                break;
            }
            at += n;
            written.store(at as u64, Relaxed);
        }
        wr
    })
}

/// Reads `n` echoed bytes and checks them against the pattern from `at`.
async fn expect_echo(rd: &mut OwnedReadHalf, dec: &mut AesCtr, seed: u8, at: usize, n: usize) {
    let mut got = vec![0u8; n];
    tokio::time::timeout(Duration::from_secs(60), rd.read_exact(&mut got))
        .await
        .expect("echo in time")
        .expect("echo");
    dec.apply(&mut got);
    let mut want = vec![0u8; n];
    pattern(seed, at, &mut want);
    assert!(got == want, "echo differs (seed {seed}, at {at})");
}

/// `n` bytes echoed on a fresh app connection.
async fn echo(addr: SocketAddr, seed: u8, n: usize) {
    let App {
        mut rd,
        wr,
        enc,
        mut dec,
    } = app(addr).await;
    let w = send(wr, enc, seed, n, Arc::default());
    expect_echo(&mut rd, &mut dec, seed, 0, n).await;
    w.await.unwrap();
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_streams_over_every_carrier() {
    for carrier in Carrier::ALL {
        let lab = lab_for(carrier).await;
        let (b, _) = lab.bridge(carrier, Faults::default()).await;
        // Sixteen at once, each with more than its credit to send: a side
        // that stopped reading while it writes would stall them all.
        let runs: Vec<_> = (0..16u8)
            .map(|i| tokio::spawn(echo(b.addr, i, 6 * MIB)))
            .collect();
        for r in runs {
            r.await
                .unwrap_or_else(|e| panic!("{}: {e}", carrier.name()));
        }
        assert_eq!(b.stats.streams.load(Relaxed), 16, "{carrier:?}");
        assert_eq!(b.stats.over_credit.load(Relaxed), 0, "{carrier:?}");
        assert!(
            lab.dc.stats().echoed_bytes >= 96 * MIB as u64,
            "{carrier:?}"
        );
        lab.proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_long_polls_and_repeated_uplinks_are_recovered() {
    for carrier in [Carrier::Https, Carrier::HttpsLanes] {
        let lab = lab_for(carrier).await;
        let faults = Faults {
            lose_poll_every: 2,
            repeat_up_every: 2,
        };
        let (b, _) = lab.bridge(carrier, faults).await;
        let runs: Vec<_> = (0..2u8)
            .map(|i| tokio::spawn(echo(b.addr, i, 2 * MIB)))
            .collect();
        for r in runs {
            r.await
                .unwrap_or_else(|e| panic!("{}: {e}", carrier.name()));
        }
        let s = &b.stats;
        let lost = s.polls_lost.load(Relaxed);
        assert!(lost > 0, "{carrier:?}: no poll lost");
        assert_eq!(s.replays_identical.load(Relaxed), lost, "{carrier:?}");
        assert!(s.ups_repeated.load(Relaxed) > 0, "{carrier:?}");
        lab.proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_closed_mid_transfer_leaves_the_others() {
    for carrier in Carrier::ALL {
        let lab = lab_for(carrier).await;
        let (b, _) = lab.bridge(carrier, Faults::default()).await;
        let App {
            mut rd,
            wr,
            enc,
            mut dec,
        } = app(b.addr).await;
        let busy = send(wr, enc, 7, 64 * MIB, Arc::default());
        expect_echo(&mut rd, &mut dec, 7, 0, MIB).await;
        let other = app(b.addr).await;
        eventually("two streams open", || lab.streams_open() == 2).await;
        // The busy stream's app goes away mid-transfer.
        busy.abort();
        drop(rd);
        eventually("the closed stream is gone", || lab.streams_open() == 1).await;
        // The other, and a new one, still carry.
        let App {
            mut rd,
            wr,
            enc,
            mut dec,
        } = other;
        // (Its writer stays open: a half-close is an abort in this protocol.)
        let w = send(wr, enc, 8, MIB, Arc::default());
        expect_echo(&mut rd, &mut dec, 8, 0, MIB).await;
        drop(w.await);
        echo(b.addr, 9, MIB).await;
        assert_eq!(b.stats.streams.load(Relaxed), 3, "{carrier:?}");
        lab.proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_websocket_ends_its_session_or_its_lane() {
    // `websocket`: the session's streams end and the session is gone.
    let lab = lab_for(Carrier::WebSocket).await;
    let (b, token) = lab.bridge(Carrier::WebSocket, Faults::default()).await;
    let mut a = app(b.addr).await;
    eventually("a stream", || lab.streams_open() == 1).await;
    b.drop_carrier();
    let mut buf = [0u8; 16];
    let eof = tokio::time::timeout(Duration::from_secs(5), a.rd.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0) | Err(_))), "the app's stream ends");
    eventually("the session closed", || lab.sessions() == 0).await;
    eventually("its streams closed", || lab.streams_open() == 0).await;
    assert!(
        lab.site()
            .websocket(&format!("tproxy-v1.{token}"))
            .await
            .is_err(),
        "no resume"
    );
    lab.proxy.stop().await;

    // `websocket-lanes`: a lane lost ends that stream only; the session
    // goes on with new lanes.
    let lanes = lab_for(Carrier::WebSocketLanes).await;
    let (b, _) = lanes
        .bridge(Carrier::WebSocketLanes, Faults::default())
        .await;
    let mut a = app(b.addr).await;
    eventually("a lane", || lanes.streams_open() == 1).await;
    b.drop_carrier();
    let eof = tokio::time::timeout(Duration::from_secs(5), a.rd.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0) | Err(_))), "the lane's stream ends");
    eventually("its stream closed", || lanes.streams_open() == 0).await;
    assert_eq!(lanes.sessions(), 1);
    lanes.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_holds_a_reader_that_stops_reading() {
    const TOTAL: usize = 160 * MIB;
    for carrier in Carrier::ALL {
        let lab = lab_for(carrier).await;
        let (b, _) = lab.bridge(carrier, Faults::default()).await;
        let App {
            mut rd,
            wr,
            enc,
            mut dec,
        } = app(b.addr).await;
        let written = Arc::new(AtomicU64::new(0));
        let w = send(wr, enc, 3, TOTAL, written.clone());
        // The app reads nothing: the writer must stall (no progress for a
        // second), everything between bounded. What it got in before that is
        // the credits (4 MiB each way) plus the kernel's socket buffers of the
        // eight socket directions on the way (loopback autotuning: up to about
        // 10 MiB each), far below what it had to send.
        let (mut last, mut same) = (0, 0);
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = written.load(Relaxed);
            same = if now == last { same + 1 } else { 0 };
            last = now;
            if same == 4 {
                break;
            }
        }
        let stalled = written.load(Relaxed) as usize;
        assert_eq!(same, 4, "{carrier:?}: the writer never stalled");
        assert!(stalled < 120 * MIB, "{carrier:?}: {stalled} bytes taken in");
        let in_flight = b.stats.max_in_flight.load(Relaxed);
        assert!(
            in_flight <= u64::from(webproxy::INITIAL_WINDOW),
            "{carrier:?}: {in_flight}"
        );
        assert_eq!(b.stats.over_credit.load(Relaxed), 0, "{carrier:?}");
        // It reads again: everything arrives, intact.
        let mut at = 0;
        while at < TOTAL {
            let n = (8 * MIB).min(TOTAL - at);
            expect_echo(&mut rd, &mut dec, 3, at, n).await;
            at += n;
        }
        w.await.unwrap();
        eprintln!("{carrier:?}: stalled after {} MiB", stalled / MIB);
        lab.proxy.stop().await;
    }
}

/// Refusals are counted by reason, the carrier in use is exported, and the
/// streams open now: what `/metrics` shows of the WEB proxy type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_by_reason_and_the_carrier_are_exported() {
    use futures_util::{SinkExt, StreamExt};
    use mtgate_proto::webproxy::Kind;
    use tokio_tungstenite::tungstenite::Message;
    let lab = lab_for(Carrier::WebSocket).await;
    let metrics = mtgate::admin::Metrics::new(["alice"]);
    metrics.set_site(lab.proxy.runtime.site.clone().unwrap());
    let mut dd = vec![0xdd];
    dd.extend_from_slice(key().expose());
    let site = lab.site();
    let (_, boot) = site
        .bootstrap(&webproxy::capability(&dd, HOST, None))
        .await
        .unwrap();
    let (_, token, _) = site.session(&boot).await.unwrap();
    let mut ws = site.websocket(&format!("tproxy-v1.{token}")).await.unwrap();
    // Stream 1 opened twice (the second is a reused id), then 65 more: one
    // past the default max_streams of 64.
    let mut body = Vec::new();
    for id in [1u32, 1].into_iter().chain(2..=65) {
        webproxy::encode(Kind::Open, id, &[], &mut body);
    }
    ws.send(Message::Binary(body.into())).await.unwrap();
    let mut closed = Vec::new();
    while closed.len() < 2 {
        let Some(Ok(Message::Binary(b))) = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
        else {
            panic!("the carrier ended");
        };
        for f in webproxy::decode_frames(&b).unwrap() {
            if f.kind == Kind::Close {
                closed.push(f.stream);
            }
        }
    }
    assert_eq!(closed, vec![1, 65]);
    let text = metrics.encode().unwrap();
    for want in [
        "mtgate_webproxy_streams_refused_total{reason=\"reused_id\"} 1",
        "mtgate_webproxy_streams_refused_total{reason=\"max_streams\"} 1",
        "mtgate_webproxy_streams_refused_total{reason=\"credit\"} 0",
        "mtgate_webproxy_carrier{carrier=\"websocket\"} 1",
        "mtgate_webproxy_sessions 1",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    assert!(text.contains("mtgate_webproxy_streams 64\n"), "{text}");
    lab.proxy.stop().await;
}
