//! The proxy-to-proxy link (issue 15) over real loopback sockets: clients
//! connect to a bridge node whose DC addresses are dead; the bridge carries
//! their sessions over the link to an exit node, which reaches the fake DC.

mod common;

use common::link::{bridge, exit, res_pq, rig, Rig};
use common::KEY_HEX;
use mtgate_proto::link::handshake::{ExitKey, Token};
use mtgate_proto::link::negotiate::Cipher;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::fake_dc::FakeDcMode;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_go_through_the_link_with_every_cipher() {
    let Rig { dc, mask, .. } = rig(FakeDcMode::Mtproto).await;
    for c in Cipher::ALL {
        let key = ExitKey::generate();
        let token = Token::generate();
        let x = exit(dc.local_addr(), &key, &[("msk", &token)], &[c], mask).await;
        // The bridge offers all four, in an order that puts `c` last: the
        // exit's single choice must win.
        let mut order: Vec<_> = Cipher::ALL.iter().copied().filter(|o| *o != c).collect();
        order.push(c);
        let b = bridge(x.link.unwrap(), &key.public(), &token, &order, "").await;
        for _ in 0..3 {
            res_pq(b.addr)
                .await
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        }
        let i = Cipher::ALL.iter().position(|o| *o == c).unwrap();
        let xs = &x.runtime.link_stats.exit;
        assert!(xs.by_cipher[i].load(Relaxed) >= 1, "{c:?} chosen");
        assert!(
            xs.streams.load(Relaxed) >= 3,
            "the exit opened a DC connection each"
        );
        assert!(b.runtime.link_stats.bridge.streams.load(Relaxed) >= 3);
        assert!(b.runtime.link_stats.bridge.bytes_down.load(Relaxed) > 0);
        b.stop().await;
        x.stop().await;
    }
    assert!(dc.stats().res_pq >= 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_key_is_fronted_and_refused() {
    let Rig {
        dc,
        mask,
        mut seen,
        key,
        token,
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
    )
    .await;
    let link = x.link.unwrap();
    // A wrong token, then a bridge pinning another exit's key.
    for (pinned, t) in [
        (key.public(), Token::generate()),
        (ExitKey::generate().public(), token.clone()),
    ] {
        let b = bridge(link, &pinned, &t, &Cipher::ALL, "").await;
        assert!(res_pq(b.addr).await.is_err());
        let got = tokio::time::timeout(Duration::from_secs(3), seen.recv())
            .await
            .expect("the mask host heard the hello")
            .unwrap();
        assert!(got.len() > 32, "the hello was replayed to the mask host");
        assert!(b.runtime.link_stats.bridge.refused.load(Relaxed) >= 1);
        assert_eq!(b.runtime.link_stats.bridge.established.load(Relaxed), 0);
        b.stop().await;
    }
    // A browser's request is fronted too, byte for byte (the bridges'
    // retried hellos may still be queued before it).
    let mut s = TcpStream::connect(link).await.unwrap();
    let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    s.write_all(get).await.unwrap();
    let found = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(got) = seen.recv().await {
            if got == get {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true));
    assert_eq!(x.runtime.link_stats.exit.established.load(Relaxed), 0);
    assert_eq!(dc.stats().res_pq, 0);
    x.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_lists_are_refused_on_both_sides() {
    let Rig {
        dc,
        mask,
        mut seen,
        key,
        token,
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &[Cipher::Aes256Gcm],
        mask,
    )
    .await;
    let b = bridge(
        x.link.unwrap(),
        &key.public(),
        &token,
        &[Cipher::ChaCha20Poly1305],
        "",
    )
    .await;
    assert!(res_pq(b.addr).await.is_err());
    assert!(x.runtime.link_stats.exit.refused.load(Relaxed) >= 1);
    assert!(b.runtime.link_stats.bridge.refused.load(Relaxed) >= 1);
    assert_eq!(x.runtime.link_stats.exit.established.load(Relaxed), 0);
    // A bridge with the token is not fronted: it was told why.
    assert!(seen.try_recv().is_err());
    b.stop().await;
    x.stop().await;
}

/// One length-prefixed message or record.
async fn read_msg(r: &mut tokio::net::tcp::OwnedReadHalf) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.ok()?;
    let mut all = len.to_vec();
    all.resize(2 + usize::from(u16::from_be_bytes(len)), 0);
    r.read_exact(&mut all[2..]).await.ok()?;
    Some(all)
}

/// Forwards bridge → exit, doing `harm` to the first record after the
/// handshake on the first connection only.
#[derive(Clone, Copy)]
enum Harm {
    Flip,
    Replay,
    /// A byte of the hello (inside the encrypted payload with the offer).
    Offer,
}

async fn meddler(exit: SocketAddr, harm: Harm) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((b, _)) = l.accept().await {
            let Ok(x) = TcpStream::connect(exit).await else {
                continue;
            };
            let harm = first.then_some(harm);
            first = false;
            tokio::spawn(async move {
                let (mut br, mut bw) = b.into_split();
                let (mut xr, mut xw) = x.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut xr, &mut bw).await;
                });
                // The hello, whole.
                let Some(mut hello) = read_msg(&mut br).await else {
                    return;
                };
                if let Some(Harm::Offer) = harm {
                    let i = hello.len() / 2;
                    hello[i] ^= 0x01;
                }
                let _ = xw.write_all(&hello).await;
                let Some(mut record) = read_msg(&mut br).await else {
                    return;
                };
                match harm {
                    Some(Harm::Flip) => {
                        let i = record.len() / 2;
                        record[i] ^= 0x01;
                        let _ = xw.write_all(&record).await;
                    }
                    Some(Harm::Replay) => {
                        let _ = xw.write_all(&record).await;
                        let _ = xw.write_all(&record).await;
                    }
                    Some(Harm::Offer) | None => {
                        let _ = xw.write_all(&record).await;
                    }
                }
                let _ = tokio::io::copy(&mut br, &mut xw).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_or_replayed_record_ends_the_link_and_the_bridge_redials() {
    let Rig { dc, mask, .. } = rig(FakeDcMode::Mtproto).await;
    for harm in [Harm::Flip, Harm::Replay] {
        let key = ExitKey::generate();
        let token = Token::generate();
        let x = exit(
            dc.local_addr(),
            &key,
            &[("msk", &token)],
            &Cipher::ALL,
            mask,
        )
        .await;
        let m = meddler(x.link.unwrap(), harm).await;
        // One link, so the second session needs a fresh one.
        let b = bridge(m, &key.public(), &token, &Cipher::ALL, "connections = 1").await;
        // The first session's stream dies with the link (or is retried on a
        // new one); either way the next sessions go through a new link.
        let _ = res_pq(b.addr).await;
        for _ in 0..3 {
            res_pq(b.addr).await.expect("through a fresh link");
        }
        let xs = &x.runtime.link_stats.exit;
        let bs = &b.runtime.link_stats.bridge;
        assert!(
            xs.closed.load(Relaxed) >= 1,
            "the exit ended the harmed link"
        );
        assert!(
            bs.established.load(Relaxed) >= 2,
            "the bridge dialled again"
        );
        b.stop().await;
        x.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_does_not_read_stalls_no_other_and_keys_rotate() {
    let Rig {
        dc,
        mask,
        key,
        token,
        ..
    } = rig(FakeDcMode::Echo).await;
    let x = exit(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
    )
    .await;
    let b = bridge(
        x.link.unwrap(),
        &key.public(),
        &token,
        &Cipher::ALL,
        "connections = 1\nrekey_bytes = 1048576",
    )
    .await;
    // A client that sends 8 MiB to the echo DC and reads nothing back.
    let mut stuck = ObfsClient::connect(b.addr, &key_of(), ClientMode::Secure, 2)
        .await
        .unwrap();
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..128 {
            if tokio::time::timeout(Duration::from_secs(20), stuck.send_raw(&chunk))
                .await
                .is_err()
            {
                break;
            }
        }
        stuck
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Another session on the same link goes on, and moves enough to rekey.
    let mut other = ObfsClient::connect(b.addr, &key_of(), ClientMode::Secure, 2)
        .await
        .unwrap();
    let msg = vec![9u8; 256 * 1024];
    for _ in 0..12 {
        other
            .echo_round_trip(&msg, Duration::from_secs(5))
            .await
            .expect("the other session is not held up");
    }
    assert_eq!(
        b.runtime.link_stats.bridge.established.load(Relaxed),
        1,
        "one link"
    );
    assert!(
        b.runtime.link_stats.bridge.rekeys.load(Relaxed) >= 2,
        "rekeyed both ways: {}",
        b.runtime.link_stats.bridge.rekeys.load(Relaxed)
    );
    assert!(x.runtime.link_stats.exit.rekeys.load(Relaxed) >= 2);
    assert_eq!(x.runtime.link_stats.exit.violations.load(Relaxed), 0);
    writer.abort();
    b.stop().await;
    x.stop().await;
}

fn key_of() -> mtgate_crypto::Key16 {
    mtgate_testkit::conf::key_from_hex(KEY_HEX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offer_changed_in_flight_gets_no_link() {
    let Rig {
        dc,
        mask,
        mut seen,
        key,
        token,
    } = rig(FakeDcMode::Mtproto).await;
    let x = exit(
        dc.local_addr(),
        &key,
        &[("msk", &token)],
        &Cipher::ALL,
        mask,
    )
    .await;
    // The meddler changes the first connection's hello (a later redial goes
    // through untouched).
    let m = meddler(x.link.unwrap(), Harm::Offer).await;
    let b = bridge(m, &key.public(), &token, &Cipher::ALL, "connections = 1").await;
    let _ = res_pq(b.addr).await;
    let got = tokio::time::timeout(Duration::from_secs(3), seen.recv())
        .await
        .expect("the changed hello was fronted")
        .unwrap();
    assert!(got.len() > 32);
    assert!(b.runtime.link_stats.bridge.refused.load(Relaxed) >= 1);
    assert!(x.runtime.link_stats.exit.refused.load(Relaxed) >= 1);
    b.stop().await;
    x.stop().await;
}
