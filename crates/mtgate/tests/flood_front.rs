//! Issue 18: a flood of failed handshakes against the real binary in its
//! default configuration (only the mask host, DCs and ports on loopback).
//! 20 000 connections from four addresses, 256 at a time, each a garbage
//! or wrong-secret handshake. Meanwhile a valid FakeTLS client relays through
//! mtgate and new valid clients keep connecting. Shown:
//! - the mask connections open at once never pass the fronting budget
//!   (`mtgate_mask_connections_peak` ≤ 16 fronted + 8 pre-connects per source);
//! - no flood connection is reset: each gets nginx's own answer, or is held
//!   silent and closed with a FIN;
//! - mtgate's memory after the flood is back near where it was;
//! - the valid clients are served throughout;
//! - each flooding source, probed one connection at a time afterwards, sees
//!   the website (compared with nginx directly).

mod common;

use common::binary::{echo, tls_echo, Stack};
use common::prober::*;
use common::*;
use mtgate_crypto::Key16;
use mtgate_testkit::client::ObfsClient;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FLOOD: usize = 20_000;
const AT_ONCE: usize = 256;
const SOURCES: [&str; 4] = ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"];

async fn valid_client(addr: SocketAddr) -> anyhow::Result<ObfsClient> {
    tokio::time::timeout(Duration::from_secs(5), tls_echo(addr, 0))
        .await
        .map_err(|_| anyhow::anyhow!("connect timed out"))?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_failed_handshakes_stays_within_the_fronting_budget() {
    let stack = Stack::start().await;
    let (proc, admin) = (&stack.proc, stack.admin);
    let addr = proc.addr;
    let pid = proc.child.id();

    // Warm up (allocator arenas, buffer pools), then take the baseline.
    for _ in 0..3 {
        let mut c = valid_client(addr).await.expect("valid client");
        echo(&mut c, 0).await.expect("echo");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = rss_of(pid);

    // The valid side: one long-lived client and a new one every 200 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (rounds, fresh) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let valid = {
        let (stop, rounds, fresh) = (stop.clone(), rounds.clone(), fresh.clone());
        tokio::spawn(async move {
            let mut long = valid_client(addr).await?;
            let mut n = 0u64;
            // Until the flood is over and at least 20 rounds were done.
            while !stop.load(Relaxed) || n < 20 {
                n += 1;
                echo(&mut long, n)
                    .await
                    .map_err(|e| anyhow::anyhow!("long client, round {n}: {e:#}"))?;
                rounds.fetch_add(1, Relaxed);
                if n.is_multiple_of(4) {
                    let mut c = valid_client(addr)
                        .await
                        .map_err(|e| anyhow::anyhow!("new client {n}: {e:#}"))?;
                    echo(&mut c, n).await?;
                    fresh.fetch_add(1, Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })
    };

    // The flood.
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut set = tokio::task::JoinSet::new();
    let wrong = Key16::new([0x66; 16]);
    let hello =
        mtgate_proto::faketls::build_client_hello(&wrong, DOMAIN, unix_now(), &[3; 64], 517);
    let mut peak_sampled = 0.0f64;
    let (mut answered, mut held) = (0usize, 0usize);
    let mut tally = |seen: Seen| {
        assert_eq!(
            seen.end,
            End::Fin,
            "a flood connection ended {:?}",
            seen.end
        );
        if seen.bytes.is_empty() {
            held += 1;
        } else {
            answered += 1;
        }
    };
    for i in 0..FLOOD {
        let permit = sem.clone().acquire_owned().await.expect("semaphore");
        let source: IpAddr = SOURCES[i % SOURCES.len()].parse().expect("ip");
        let bytes = if i % 2 == 0 {
            hello.clone()
        } else {
            b"\x05\x01\x00garbage\r\n\r\n".to_vec()
        };
        set.spawn(async move {
            let seen = probe_from(
                Some(source),
                addr,
                &[bytes],
                Duration::ZERO,
                true,
                Duration::from_secs(10),
            )
            .await;
            drop(permit);
            seen
        });
        if i % 2000 == 0 {
            if let Ok((200, body)) = http_get(admin, "/metrics").await {
                peak_sampled =
                    peak_sampled.max(metric(&body, "mtgate_mask_connections_open").unwrap_or(0.0));
            }
        }
        while let Some(r) = set.try_join_next() {
            tally(r.expect("flood task"));
        }
    }
    while let Some(r) = set.join_next().await {
        tally(r.expect("flood task"));
    }
    let flood_time = t0.elapsed();
    let (rounds_during, fresh_during) = (rounds.load(Relaxed), fresh.load(Relaxed));
    stop.store(true, Relaxed);
    valid
        .await
        .expect("valid task")
        .expect("the valid clients were served throughout the flood");

    let (code, body) = http_get(admin, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    let peak = metric(&body, "mtgate_mask_connections_peak").expect("peak gauge");
    let over = metric(&body, "mtgate_mask_over_budget_total").expect("over-budget counter");
    // Default scope: the flooding sources are read as suspects, not refused.
    let suspects = metric(&body, "mtgate_policy_suspect_admissions_total").expect("suspects");
    let collateral = metric(&body, "mtgate_policy_collateral_total").expect("collateral");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_of(pid);
    let grown = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{FLOOD} flood connections in {flood_time:?}: {answered} answered by nginx through mtgate, \
         {held} held; mask connections peak {peak} (sampled {peak_sampled}), over budget {over}; \
         suspect admissions {suspects}, collateral {collateral}; valid: {} echo rounds, {} new clients; \
         RSS {} KiB -> {} KiB (+{} KiB)",
        rounds.load(Relaxed),
        fresh.load(Relaxed),
        rss_before / 1024,
        rss_after / 1024,
        grown / 1024
    );
    assert!(flood_time < Duration::from_secs(240), "bounded time");
    assert!(
        peak <= (24 * (SOURCES.len() + 1)) as f64,
        "mask connections stay within 16 fronted + 8 pre-connects per source (four \
         flooding, and the valid clients' own pre-connects from 127.0.0.1): peak {peak}"
    );
    assert!(over > 0.0, "the flood met the budget");
    assert!(
        suspects > 1000.0,
        "the flooding sources were read as suspects: {suspects}"
    );
    assert_eq!(
        collateral, 0.0,
        "the valid clients' source was never suspect"
    );
    assert!(answered > 0, "some flood connections got the site's answer");
    assert!(
        rounds_during >= 2 && fresh_during >= 1 && rounds.load(Relaxed) >= 20,
        "the valid clients kept relaying and connecting during the flood \
         ({rounds_during} rounds, {fresh_during} new clients) and after it"
    );
    assert!(
        grown < 32 << 20,
        "memory stays bounded: +{} KiB",
        grown / 1024
    );

    // Each flooding source, probed one connection at a time, sees the site.
    let mut errors = Vec::new();
    for s in SOURCES {
        let source: IpAddr = s.parse().expect("ip");
        errors.extend(run(stack.site, addr, source, &series(8)).await);
    }
    assert!(
        errors.is_empty(),
        "{} of 32 probes from the flooding sources told mtgate from nginx:\n{}",
        errors.len(),
        errors.join("\n")
    );
}
