//! The admin listener through a zero-downtime upgrade (issue 18): A serves
//! `/health/ready` and `/metrics` on a fixed port; `mtgate run --takeover` (B)
//! receives that socket with the client listeners. A prober polling both
//! endpoints before, during and after the upgrade never meets a refused
//! connection or anything but a 200, and B answers once A has exited.
#![cfg(unix)]

mod common;
mod handover_support;

use common::{free_port, http_get as get};
use handover_support::*;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One poll: when, which path, and the status or what went wrong.
type Poll = (Instant, &'static str, Result<u16, String>);

/// Polls `/health/ready` and `/metrics` every few ms until stopped.
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Poll>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Poller {
    fn start(addr: SocketAddr) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, v) = (stop.clone(), seen.clone());
        let task = tokio::spawn(async move {
            let mut n = 0u64;
            while !s.load(Ordering::SeqCst) {
                n += 1;
                let path = if n.is_multiple_of(2) {
                    "/metrics"
                } else {
                    "/health/ready"
                };
                let r = get(addr, path).await.and_then(|(status, body)| {
                    if path == "/metrics" && status == 200 && !body.contains("mtgate_") {
                        return Err("a /metrics body without mtgate metrics".into());
                    }
                    Ok(status)
                });
                v.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((Instant::now(), path, r));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Poller { stop, seen, task }
    }

    async fn finish(self) -> Vec<Poll> {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("poller ends")
            .expect("poller task");
        let v = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        v.clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_answer_throughout_a_takeover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc = echo_dc().await;
    let admin = free_port();
    let cfg = write_config(
        dir.path(),
        "config.toml",
        &config_with_admin(
            dir.path(),
            &["127.0.0.1:0"],
            dc.local_addr(),
            "2s",
            Some(admin),
        ),
    );
    let mut a = Proc::spawn("A", dir.path(), &cfg, &[]);
    let addr = a
        .listening()
        .await
        .unwrap_or_else(|| panic!("A: {}", a.log()));
    assert_eq!(
        get(admin, "/health/ready").await.map(|r| r.0),
        Ok(200),
        "A is ready: {}",
        a.log()
    );
    // A client that stays through the upgrade keeps A draining for a while.
    let mut held = connect(addr).await.expect("client");
    round_trip(&mut held, 0, 0).await.expect("echo");

    let poller = Poller::start(admin);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut b = Proc::spawn("B", dir.path(), &cfg, &["--takeover"]);
    let b_addr = b
        .listening()
        .await
        .unwrap_or_else(|| panic!("B: {}\nA: {}", b.log(), a.log()));
    assert_eq!(b_addr, addr);
    // During A's drain: the old client still relays, the admin port answers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    round_trip(&mut held, 0, 1)
        .await
        .expect("the old client relays during the drain");
    drop(held);
    let status = a
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("A did not exit: {}", a.log()));
    assert!(status.success(), "{status:?}");
    let a_gone = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = poller.finish().await;

    let bad: Vec<_> = seen.iter().filter(|(_, _, r)| r != &Ok(200)).collect();
    assert!(
        bad.is_empty(),
        "{} of {} admin requests did not get a 200: {:?}\nA: {}\nB: {}",
        bad.len(),
        seen.len(),
        &bad[..bad.len().min(5)],
        a.log(),
        b.log()
    );
    let after = seen.iter().filter(|(t, _, _)| *t > a_gone).count();
    assert!(seen.len() > 50, "enough polls: {}", seen.len());
    assert!(after > 10, "polls answered after A exited: {after}");
    for p in ["/health/ready", "/metrics"] {
        assert!(
            seen.iter().any(|(t, q, _)| *t > a_gone && *q == p),
            "{p} polled after A exited"
        );
    }
    let b_log = b.log();
    assert!(
        b_log.contains("admin listener (metrics, health) taken over"),
        "{b_log}"
    );
    assert!(
        !b_log.contains("cannot start the admin listener"),
        "{b_log}"
    );
    // B is the one serving now: its metrics count its own client.
    one_shot(addr, 7).await.expect("B serves clients");
    let (code, body) = get(admin, "/metrics").await.expect("metrics from B");
    assert_eq!(code, 200);
    assert!(body.contains("mtgate_"), "{body}");
    b.signal("-TERM");
    let s = b.wait_exit(Duration::from_secs(10)).await.expect("B exits");
    assert!(s.success(), "{s:?}");
}
