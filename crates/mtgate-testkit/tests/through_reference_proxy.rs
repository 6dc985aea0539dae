//! The scripted client through a minimal reference proxy built here from
//! `mtgate_proto::Handshake` (direct mode, PROTOCOL §5/§6.5), to the fake DC:
//! proves every client mode (plain tags, `dd`, FakeTLS with any hello size and
//! a segmented hello) end to end, and that the client refuses a forged
//! ServerHello.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mtgate_crypto::{fill_random, x25519_public_key, Key16};
use mtgate_proto::faketls::{self, app_record_header, RecordStripper};
use mtgate_proto::handshake::UserKey;
use mtgate_proto::obfs2::{build_dc_header, is_valid_init};
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::{Handshake, HandshakeConfig, Outcome, ProtoTag, ProxySecret, SecretKind};
use mtgate_testkit::mtproto::FAKE_PQ;
use mtgate_testkit::{ClientMode, ClientOptions, FakeDc, FakeDcMode, ObfsClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DOMAIN: &str = "www.example.com";

fn key() -> Key16 {
    Key16::new([0x5a; 16])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Starts a one-user direct-mode proxy in front of `dc`; returns its address.
async fn reference_proxy(dc: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = HandshakeConfig {
        users: vec![UserKey::new(key(), 0, true, true, true)],
        domains: vec![DOMAIN.into()],
        max_past_secs: 600,
        max_future_secs: 120,
        fake_cert_len: (2500, 3000),
        observed_cert_lens: Vec::new(),
        versions_first: false,
    };
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let cfg = cfg.clone();
            tokio::spawn(async move {
                let _ = serve(s, cfg, dc).await;
            });
        }
    });
    addr
}

async fn serve(mut client: TcpStream, cfg: HandshakeConfig, dc: SocketAddr) -> std::io::Result<()> {
    let mut hs = Handshake::new();
    let mut replay = ReplayCache::new(100, 3600);
    let mut buf = vec![0u8; 64 * 1024];
    let acc = loop {
        let n = client.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        match hs.feed(&buf[..n], now(), &cfg, &mut replay, &mut fill_random) {
            Outcome::NeedMore => {}
            Outcome::Respond(r) => client.write_all(&r).await?,
            Outcome::Accepted(a) => break a,
            Outcome::Reject(_) => return Ok(()),
        }
    };
    let mut acc = *acc;
    let mut init = [0u8; 64];
    while {
        fill_random(&mut init);
        !is_valid_init(&init)
    } {}
    let (header, mut dcc) = build_dc_header(&init, acc.tag, acc.dc);
    let mut up = TcpStream::connect(dc).await?;
    up.write_all(&header).await?;
    let mut early = std::mem::take(&mut acc.early);
    acc.ciphers.dec.apply(&mut early);
    dcc.enc.apply(&mut early);
    up.write_all(&early).await?;

    let (mut crd, mut cwr) = client.into_split();
    let (mut drd, mut dwr) = up.into_split();
    let mut stripper: Option<RecordStripper> = acc.tls.take();
    let tls = stripper.is_some();
    let (mut cdec, mut cenc) = (acc.ciphers.dec, acc.ciphers.enc);
    let (mut denc, mut ddec) = (dcc.enc, dcc.dec);
    let upward = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = crd.read(&mut buf).await?;
            if n == 0 {
                return dwr.shutdown().await;
            }
            let m = match &mut stripper {
                Some(s) => s
                    .strip_in_place(&mut buf[..n])
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
                None => n,
            };
            cdec.apply(&mut buf[..m]);
            denc.apply(&mut buf[..m]);
            dwr.write_all(&buf[..m]).await?;
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = drd.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        ddec.apply(&mut buf[..n]);
        cenc.apply(&mut buf[..n]);
        if tls {
            cwr.write_all(&app_record_header(n)).await?;
        }
        cwr.write_all(&buf[..n]).await?;
    }
    upward.abort();
    Ok(())
}

async fn full_exchange(c: &mut ObfsClient) {
    let res = c.req_pq_multi().await.unwrap();
    assert_eq!(res.pq_u64(), Some(FAKE_PQ));
    let ok = c.req_dh_params(&res).await.unwrap();
    assert_eq!(ok.server_nonce, res.server_nonce);
    assert_eq!(ok.encrypted_answer.len(), 15);
}

#[tokio::test]
async fn every_mode_reaches_the_dc() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = reference_proxy(dc.local_addr()).await;
    let modes = [
        ClientMode::Classic(ProtoTag::Abridged),
        ClientMode::Classic(ProtoTag::Intermediate),
        ClientMode::Secure,
        ClientMode::FakeTls {
            domain: DOMAIN.into(),
        },
    ];
    for (i, mode) in modes.into_iter().enumerate() {
        let mut c = ObfsClient::connect(proxy, &key(), mode.clone(), i as i16 + 1)
            .await
            .unwrap();
        full_exchange(&mut c).await;
        if let ClientMode::FakeTls { .. } = mode {
            let sh = c.server_hello().unwrap();
            assert!(sh.len() > 2500 + 127 + 11);
        }
    }
    assert_eq!(
        dc.seen(),
        vec![
            (ProtoTag::Abridged, 1),
            (ProtoTag::Intermediate, 2),
            (ProtoTag::Padded, 3),
            (ProtoTag::Padded, 4)
        ]
    );
}

#[tokio::test]
async fn secrets_select_the_mode() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = reference_proxy(dc.local_addr()).await;
    for kind in [
        SecretKind::Plain,
        SecretKind::Dd,
        SecretKind::Ee(DOMAIN.into()),
    ] {
        let secret = ProxySecret { key: key(), kind };
        let mut c = ObfsClient::connect_secret(proxy, &secret, -2)
            .await
            .unwrap();
        full_exchange(&mut c).await;
    }
    assert_eq!(
        dc.seen(),
        vec![
            (ProtoTag::Intermediate, -2),
            (ProtoTag::Padded, -2),
            (ProtoTag::Padded, -2)
        ]
    );
}

#[tokio::test]
async fn fake_tls_hello_sizes_segments_and_echo() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
        .await
        .unwrap();
    let proxy = reference_proxy(dc.local_addr()).await;
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.into(),
    };
    for (len, segments) in [(512, 1), (517, 3), (1800, 7), (16_000, 2), (16_000, 40)] {
        let opts = ClientOptions {
            hello_len: Some(len),
            hello_segments: segments,
            segment_delay: Duration::from_millis(2),
            ..ClientOptions::default()
        };
        let mut c = ObfsClient::connect_with(proxy, &key(), mode.clone(), 2, opts)
            .await
            .unwrap();
        // Many 2878-byte records each way.
        let mut data = vec![0u8; 256 << 10];
        fill_random(&mut data);
        c.send_raw(&data).await.unwrap();
        assert!(
            c.recv_exact(data.len()).await.unwrap() == data,
            "hello {len}/{segments}"
        );
    }
    assert_eq!(dc.seen().len(), 5);
}

#[tokio::test]
async fn stale_timestamp_or_wrong_key_is_refused() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .unwrap();
    let proxy = reference_proxy(dc.local_addr()).await;
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.into(),
    };
    let opts = ClientOptions {
        timestamp: Some((now() - 3600) as u32),
        io_timeout: Duration::from_secs(3),
        ..ClientOptions::default()
    };
    let e = ObfsClient::connect_with(proxy, &key(), mode.clone(), 2, opts)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("closed"), "{e:#}");
    let e = ObfsClient::connect(proxy, &Key16::new([1; 16]), mode, 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("closed"), "{e:#}");
    // Plain obfuscated2 with the wrong key: the proxy closes after the header.
    let mut c = ObfsClient::connect(proxy, &Key16::new([1; 16]), ClientMode::Secure, 2)
        .await
        .unwrap();
    assert!(c.closed_within(Duration::from_secs(5)).await);
    assert!(dc.seen().is_empty());
}

/// A server that answers the hello with a response signed by the wrong key.
#[tokio::test]
async fn forged_server_hello_is_rejected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut rec = vec![0u8; 5];
        s.read_exact(&mut rec).await.unwrap();
        let len = faketls::hello_record_len(&rec).unwrap().unwrap();
        rec.resize(len, 0);
        s.read_exact(&mut rec[5..]).await.unwrap();
        let hello = faketls::parse_client_hello(&rec).unwrap();
        let resp = faketls::build_server_hello(
            &hello,
            &Key16::new([9; 16]),
            &x25519_public_key([3; 32]),
            &[7; 100],
        );
        s.write_all(&resp).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    });
    let mode = ClientMode::FakeTls {
        domain: DOMAIN.into(),
    };
    let e = ObfsClient::connect(addr, &key(), mode, 2)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("digest mismatch"), "{e:#}");
}
