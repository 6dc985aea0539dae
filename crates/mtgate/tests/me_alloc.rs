//! Allocations per packet on the ME path, counted by a global allocator in
//! this test binary of its own: a client echoes packets through mtgate to the
//! fake ME (a separate process, not counted) and back. The count covers the
//! whole process (the scripted client's own `Vec` per answer included), so
//! the bound is loose; it catches a return of per-packet copies on both
//! directions (request body, answer buffer, framing): each adds one per packet.

mod me;

use me::*;
use mtgate_testkit::alloc::{allocations, Counting};
use std::time::Duration;

#[global_allocator]
static GLOBAL: Counting = Counting;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn me_echo_allocations_per_packet_are_few() {
    if !available() {
        return;
    }
    let fake = FakeMe::start(1, &[]).await;
    let proxy = MeProxy::start(&fake, &[], dead_dc()).await;
    assert!(proxy.wait_ready(1).await);
    let mut c = classic(proxy.addr, 2).await;
    let mut p = vec![0u8; 512];
    p[..8].copy_from_slice(b"\x01\x02\x03\x04\x05\x06\x07\x08");
    p[8..15].copy_from_slice(b"NOTCMD!");
    let mut round = async |n: usize| {
        for _ in 0..n {
            c.send_frame(&p).await.unwrap();
            let back = c.recv_frame().await.unwrap();
            assert_eq!(back.len(), p.len());
        }
    };
    // Warm up (buffers, free lists, channel blocks), then count.
    tokio::time::timeout(Duration::from_secs(30), round(200))
        .await
        .expect("warm-up in time");
    const N: u64 = 2000;
    let before = allocations();
    tokio::time::timeout(Duration::from_secs(60), round(N as usize))
        .await
        .expect("echoes in time");
    let per = (allocations() - before) as f64 / N as f64;
    eprintln!("allocations per echoed packet (whole process): {per:.2}");
    // Measured: 6.00 before buffer recycling, 4.00 after; at least 3 of them
    // are the scripted client's (its frame `Vec`, read buffer, answer `Vec`).
    assert!(per < 4.5, "{per:.2} allocations per packet");
    drop(c);
    proxy.stop().await;
}
