//! The fake DC talked to directly (obfuscated2 without a secret), by the
//! scripted client and by hand-made byte streams: every tag, the README's
//! answers, hostile input, echo mode, shutdown, and the `mtgate-fake-dc` binary.

use std::net::SocketAddr;
use std::time::Duration;

use mtgate_crypto::{fill_random, Key16};
use mtgate_proto::obfs2::{build_header, DcIndex};
use mtgate_proto::transport;
use mtgate_proto::ProtoTag;
use mtgate_testkit::client::dh_params_request;
use mtgate_testkit::mtproto::{self, FAKE_FINGERPRINT, FAKE_PQ};
use mtgate_testkit::{ClientOptions, FakeDc, FakeDcMode, ObfsClient, ResPq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TAGS: [ProtoTag; 3] = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded];

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn check_res_pq(res: &ResPq) {
    assert_eq!(res.pq_u64(), Some(FAKE_PQ));
    assert_eq!(res.fingerprints, vec![FAKE_FINGERPRINT]);
    assert_ne!(res.server_nonce, [0; 16]);
}

#[tokio::test]
async fn every_tag_gets_res_pq_and_dh_params_ok() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    for (i, tag) in TAGS.into_iter().enumerate() {
        let dc_index = [2, -4, 10003][i];
        let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), tag, dc_index)
            .await
            .unwrap();
        assert_eq!(c.tag(), tag);
        let res = c.req_pq_multi().await.unwrap();
        check_res_pq(&res);
        let ok = c.req_dh_params(&res).await.unwrap();
        assert_eq!(ok.nonce, res.nonce);
        assert_eq!(ok.server_nonce, res.server_nonce, "{tag:?}: valid request");
        assert_eq!(ok.encrypted_answer, vec![0; 15]);

        // An invalid request (wrong p) gets a zeroed server_nonce.
        let mut bad = dh_params_request(&res).unwrap();
        bad.p = mtproto::be_bytes_minimal(3);
        let ok = c.req_dh_params_with(&bad).await.unwrap();
        assert_eq!(ok.server_nonce, [0; 16]);
        // So does a valid-looking one with a short encrypted_data.
        let mut bad = dh_params_request(&res).unwrap();
        bad.encrypted_data.truncate(255);
        assert_eq!(
            c.req_dh_params_with(&bad).await.unwrap().server_nonce,
            [0; 16]
        );
    }
    assert_eq!(
        dc.seen(),
        vec![
            (ProtoTag::Abridged, 2),
            (ProtoTag::Intermediate, -4),
            (ProtoTag::Padded, 10003)
        ]
    );
    let s = dc.stats();
    assert_eq!(
        (s.accepted, s.rejected, s.res_pq, s.dh_ok, s.dh_invalid),
        (3, 0, 3, 3, 6)
    );
}

#[tokio::test]
async fn each_connection_has_its_own_server_nonce() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let mut a = ObfsClient::connect_direct_dc(dc.local_addr(), ProtoTag::Padded, 1)
        .await
        .unwrap();
    let mut b = ObfsClient::connect_direct_dc(dc.local_addr(), ProtoTag::Padded, 1)
        .await
        .unwrap();
    let ra = a.req_pq_multi().await.unwrap();
    let rb = b.req_pq_multi().await.unwrap();
    assert_ne!(ra.server_nonce, rb.server_nonce);
    // a's nonces are not valid on b.
    let req = dh_params_request(&ra).unwrap();
    assert_eq!(
        b.req_dh_params_with(&req).await.unwrap().server_nonce,
        [0; 16]
    );
    assert_eq!(
        a.req_dh_params_with(&req).await.unwrap().server_nonce,
        ra.server_nonce
    );
}

/// Messages shaped like TDLib's: quick-ack bit set, `length` covering random
/// padding inside the message, 15 bytes of frame padding, old `req_pq`; answers
/// are server-style and framed in the client's transport.
#[tokio::test]
async fn tdlib_shaped_requests() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    for tag in TAGS {
        for ctor in [mtproto::REQ_PQ_MULTI, mtproto::REQ_PQ] {
            let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), tag, 2)
                .await
                .unwrap();
            let mut nonce = [0u8; 16];
            fill_random(&mut nonce);
            let mut body = ctor.to_le_bytes().to_vec();
            body.extend_from_slice(&nonce);
            body.resize(160, 0);
            fill_random(&mut body[20..]);
            let msg = mtproto::wrap_unencrypted(mtproto::next_msg_id(0, 0), &body);
            let pad = if tag == ProtoTag::Padded { 15 } else { 0 };
            let mut hdr = [0u8; 4];
            let n = transport::encode_header(tag, msg.len(), pad, true, &mut hdr).unwrap();
            let mut frame = hdr[..n].to_vec();
            frame.extend_from_slice(&msg);
            frame.extend_from_slice(&vec![0xaa; pad]);
            // Split the frame to exercise reassembly.
            let (x, y) = frame.split_at(3);
            c.send_raw(x).await.unwrap();
            c.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
            c.send_raw(y).await.unwrap();
            let (msg_id, answer) = c.recv_message().await.unwrap();
            assert_eq!(msg_id % 4, 1, "server msg_id");
            let res = ResPq::parse(&answer).unwrap();
            assert_eq!(res.nonce, nonce);
            check_res_pq(&res);
            assert_eq!(answer.len(), 64);
        }
    }
}

#[tokio::test]
async fn unknown_messages_are_ignored_and_the_connection_stays() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), ProtoTag::Intermediate, 2)
        .await
        .unwrap();
    // Encrypted-looking message, unknown constructor, too-short payloads, empty frame.
    let mut encrypted = vec![1u8; 64];
    fill_random(&mut encrypted[8..]);
    c.send_frame(&encrypted).await.unwrap();
    c.send_message(&0x1234_5678u32.to_le_bytes()).await.unwrap();
    c.send_message(&mtproto::REQ_PQ_MULTI.to_le_bytes())
        .await
        .unwrap();
    c.send_message(&mtproto::REQ_DH_PARAMS.to_le_bytes())
        .await
        .unwrap();
    c.send_frame(&[0; 12]).await.unwrap();
    c.send_frame(&[]).await.unwrap();
    let res = c.req_pq_multi().await.unwrap();
    check_res_pq(&res);
}

#[tokio::test]
async fn bad_headers_are_closed() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    // A client→proxy header (made with a secret) is garbage to a DC.
    let init: [u8; 64] = std::array::from_fn(|i| 0x40 + i as u8);
    let (wire, _) = build_header(
        &init,
        ProtoTag::Padded,
        DcIndex(2),
        Some(&Key16::new([0x11; 16])),
    );
    let mut s = TcpStream::connect(dc.local_addr()).await.unwrap();
    s.write_all(&wire).await.unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // A short header followed by EOF.
    let mut s = TcpStream::connect(dc.local_addr()).await.unwrap();
    s.write_all(&wire[..30]).await.unwrap();
    s.shutdown().await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert!(dc.seen().is_empty());
    let st = dc.stats();
    assert_eq!((st.accepted, st.rejected), (2, 2));
}

#[tokio::test]
async fn oversized_or_garbage_frames_end_only_that_connection() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    for (tag, junk) in [
        (ProtoTag::Intermediate, vec![0xff, 0xff, 0xff, 0x7f]),
        (ProtoTag::Padded, vec![0x00, 0x00, 0x20, 0x00]),
        (ProtoTag::Abridged, vec![0x7f, 0x01, 0x00, 0x00]),
        (ProtoTag::Abridged, vec![0xff, 0xff, 0xff, 0xff]),
    ] {
        let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), tag, 2)
            .await
            .unwrap();
        c.send_raw(&junk).await.unwrap();
        assert!(
            c.closed_within(Duration::from_secs(5)).await,
            "{tag:?} {junk:?}"
        );
    }
    // Random garbage after a valid header: closed or ignored, never a crash.
    for tag in TAGS {
        let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), tag, 2)
            .await
            .unwrap();
        let mut junk = vec![0u8; 3000];
        fill_random(&mut junk);
        let _ = c.send_raw(&junk).await;
        let _ = c.closed_within(Duration::from_millis(50)).await;
    }
    let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), ProtoTag::Abridged, 2)
        .await
        .unwrap();
    check_res_pq(&c.req_pq_multi().await.unwrap());
}

#[tokio::test]
async fn echo_round_trip() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Echo).await.unwrap();
    for tag in TAGS {
        let mut c = ObfsClient::connect_direct_dc(dc.local_addr(), tag, -2)
            .await
            .unwrap();
        let mut small = vec![0u8; 100];
        fill_random(&mut small);
        c.send_raw(&small).await.unwrap();
        assert_eq!(c.recv_exact(100).await.unwrap(), small);
        // Large (the client keeps reading while it writes, so this cannot
        // deadlock on full socket buffers); kept modest because AES-CTR is slow
        // in unoptimised test builds.
        let len = if tag == ProtoTag::Padded {
            2 << 20
        } else {
            64 << 10
        };
        let mut big = vec![0u8; len];
        fill_random(&mut big);
        c.send_raw(&big).await.unwrap();
        assert!(c.recv_exact(big.len()).await.unwrap() == big);
        // Frames are just bytes to the echo DC.
        // (padded frames come back with whole words of the client's padding).
        c.send_frame(&[1, 2, 3, 4]).await.unwrap();
        assert!(c.recv_frame().await.unwrap().starts_with(&[1, 2, 3, 4]));
    }
    assert_eq!(dc.seen().len(), 3);
    assert!(dc.stats().echoed_bytes >= (2 << 20) + 2 * (64 << 10));
}

#[tokio::test]
async fn dropping_the_dc_closes_everything() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let addr = dc.local_addr();
    let mut c = ObfsClient::connect_direct_dc(addr, ProtoTag::Padded, 2)
        .await
        .unwrap();
    c.req_pq_multi().await.unwrap();
    assert!(dc.wait_seen(1, Duration::from_secs(1)).await);
    assert!(!dc.wait_seen(2, Duration::from_millis(20)).await);
    dc.stop().await;
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(TcpStream::connect(addr).await.is_err());

    let dc = FakeDc::start(loopback(), FakeDcMode::Echo).await.unwrap();
    let addr = dc.local_addr();
    let mut c = ObfsClient::connect_direct_dc(addr, ProtoTag::Abridged, 2)
        .await
        .unwrap();
    c.send_raw(b"ping").await.unwrap();
    assert_eq!(c.recv_exact(4).await.unwrap(), b"ping");
    drop(dc);
    assert!(c.closed_within(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn client_timeouts_are_bounded() {
    let dc = FakeDc::start(loopback(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let opts = ClientOptions {
        io_timeout: Duration::from_millis(200),
        ..ClientOptions::default()
    };
    let mut c =
        ObfsClient::connect_direct_dc_with(dc.local_addr(), ProtoTag::Intermediate, 2, opts)
            .await
            .unwrap();
    // The DC ignores this, so no answer comes.
    c.send_message(&0xdead_beefu32.to_le_bytes()).await.unwrap();
    let t = std::time::Instant::now();
    let e = c.recv_frame().await.unwrap_err();
    assert!(e.to_string().contains("timed out"), "{e:#}");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn binary_prints_listening_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mtgate-fake-dc"))
        .args(["--listen", "127.0.0.1:0", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addrs = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let addr: SocketAddr = line.strip_prefix("LISTENING ").unwrap().parse().unwrap();
        addrs.push(addr);
    }
    assert_ne!(addrs[0], addrs[1]);
    for addr in addrs {
        let mut c = ObfsClient::connect_direct_dc(addr, ProtoTag::Padded, 2)
            .await
            .unwrap();
        let res = c.req_pq_multi().await.unwrap();
        check_res_pq(&res);
        c.req_dh_params(&res).await.unwrap();
    }
    child.kill().await.unwrap();

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mtgate-fake-dc"))
        .arg("--echo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next_line().await.unwrap().unwrap();
    let addr: SocketAddr = line.strip_prefix("LISTENING ").unwrap().parse().unwrap();
    assert!(addr.ip().is_loopback());
    let mut c = ObfsClient::connect_direct_dc(addr, ProtoTag::Intermediate, 2)
        .await
        .unwrap();
    c.send_raw(b"echo me").await.unwrap();
    assert_eq!(c.recv_exact(7).await.unwrap(), b"echo me");
    child.kill().await.unwrap();
}
