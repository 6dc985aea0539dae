//! Zero-downtime restart with real processes: `mtgate run` (A) serves clients
//! through a loopback fake DC in echo mode; `mtgate run --takeover` (B) takes
//! its listening sockets over while A drains. Also: SIGTERM drains and exits 0,
//! a second signal exits at once, and failed takeovers leave A serving.
//!
//! Every DC and the mask host point at loopback; every wait is bounded.
#![cfg(unix)]

mod handover_support;

use handover_support::*;
use std::process::Command;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_keep_relaying_through_a_takeover() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_dc, cfg, mut a, addr) = start_a(dir.path(), "config.toml", "20s").await;

    // Established clients: ~3 s of exchanges each, spanning the handover.
    let long = spawn_long_clients(addr, 8, 160, Duration::from_millis(25));
    let churn = Churn::start(addr);
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut b = Proc::spawn("B", dir.path(), &cfg, &["--takeover"]);
    let b_addr = b
        .listening()
        .await
        .unwrap_or_else(|| panic!("B: {}\nA: {}", b.log(), a.log()));
    let taken_at = Instant::now();
    assert_eq!(b_addr, addr, "B serves the same socket");
    churn.mark();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !a.exited(),
        "A must drain its established sessions, not exit at once: {}",
        a.log()
    );

    let mut last_done = taken_at;
    for (i, h) in long.into_iter().enumerate() {
        let done = tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("long client in time")
            .expect("join")
            .unwrap_or_else(|e| panic!("long client {i} dropped: {e:#}\nA: {}", a.log()));
        last_done = last_done.max(done);
    }
    assert!(
        last_done > taken_at + Duration::from_secs(1),
        "the old connections kept relaying well after the takeover"
    );
    let status = a
        .wait_exit(Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("A did not exit after draining: {}", a.log()));
    assert!(status.success(), "A exits 0: {status:?}\n{}", a.log());
    assert!(
        Instant::now() >= last_done,
        "A exited only after its connections ended"
    );
    let a_log = a.log();
    assert!(a_log.contains("listeners taken over"), "{a_log}");

    // New connections go on succeeding once A is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures, after) = churn.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} new connections failed: {:?}\nA: {a_log}\nB: {}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)],
        b.log()
    );
    assert!(ok > 100, "enough new connections were tried: {ok}");
    assert!(after > 50, "new connections after the takeover: {after}");
    eprintln!("{ok} new connections, {after} after the takeover, none failed");

    // B serves, and on SIGTERM exits 0 too.
    one_shot(addr, 1).await.expect("B serves");
    b.signal("-TERM");
    let s = b.wait_exit(Duration::from_secs(10)).await.expect("B exits");
    assert!(s.success(), "{s:?}");
    assert!(
        !dir.path().join("mtgate.handover.sock").exists(),
        "the last process removes its control socket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_drains_and_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_dc, _cfg, mut a, addr) = start_a(dir.path(), "config.toml", "10s").await;
    let mut c = connect(addr).await.expect("connect");
    round_trip(&mut c, 0, 0).await.expect("first round trip");

    a.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        one_shot(addr, 1).await.is_err(),
        "no new connection after SIGTERM"
    );
    // The established connection finishes its exchange during the drain.
    for r in 1..=10 {
        round_trip(&mut c, 0, r)
            .await
            .unwrap_or_else(|e| panic!("round {r} during the drain: {e:#}\n{}", a.log()));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!a.exited(), "A waits for the open session");
    let closed = Instant::now();
    drop(c);
    let s = a
        .wait_exit(Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("A did not exit: {}", a.log()));
    assert!(s.success(), "{s:?}");
    assert!(
        closed.elapsed() < Duration::from_secs(3),
        "A exits soon after its last session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_deadline_and_second_signal_end_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A short deadline: an idle session is ended after it.
    let (dc, _cfg, mut a, addr) = start_a(dir.path(), "short.toml", "1s").await;
    let mut c = connect(addr).await.expect("connect");
    round_trip(&mut c, 0, 0).await.expect("round trip");
    let t = Instant::now();
    a.signal("-TERM");
    let s = a.wait_exit(Duration::from_secs(6)).await.expect("exits");
    assert!(s.success(), "{s:?}");
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "waited the drain"
    );
    assert!(
        c.closed_within(Duration::from_secs(3)).await,
        "session ended"
    );

    // A long deadline: the second SIGTERM exits at once.
    let cfg = write_config(
        dir.path(),
        "long.toml",
        &config(dir.path(), &["127.0.0.1:0"], dc.local_addr(), "60s"),
    );
    let mut a = Proc::spawn("A2", dir.path(), &cfg, &[]);
    let addr = a
        .listening()
        .await
        .unwrap_or_else(|| panic!("A2: {}", a.log()));
    let mut c = connect(addr).await.expect("connect");
    round_trip(&mut c, 0, 0).await.expect("round trip");
    a.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!a.exited(), "draining");
    let t = Instant::now();
    a.signal("-INT");
    let s = a.wait_exit(Duration::from_secs(5)).await.expect("exits");
    assert!(s.success(), "{s:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_takeovers_leave_the_old_process_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc = echo_dc().await;
    let good = config(dir.path(), &["127.0.0.1:0"], dc.local_addr(), "10s");
    let cfg = write_config(dir.path(), "config.toml", &good);
    let mut a = Proc::spawn("A", dir.path(), &cfg, &[]);
    let addr = a
        .listening()
        .await
        .unwrap_or_else(|| panic!("A: {}", a.log()));
    let long = spawn_long_clients(addr, 2, 60, Duration::from_millis(25));
    let churn = Churn::start(addr);

    // 1. A broken config: B stops before it even asks.
    let broken = write_config(
        dir.path(),
        "broken.toml",
        &good.replace(KEY_HEX, "not-a-secret"),
    );
    let mut b1 = Proc::spawn("B1", dir.path(), &broken, &["--takeover"]);
    let s = b1
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("B1 exits");
    assert!(!s.success());

    // 2. B receives the fds, then cannot bind an extra address: it gives up
    //    before TAKEN, and A never stopped accepting.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let busy_addr = busy.local_addr().expect("addr").to_string();
    let extra = write_config(
        dir.path(),
        "extra.toml",
        &config(
            dir.path(),
            &["127.0.0.1:0", &busy_addr],
            dc.local_addr(),
            "10s",
        ),
    );
    let mut b2 = Proc::spawn("B2", dir.path(), &extra, &["--takeover"]);
    let s = b2
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("B2 exits");
    assert!(!s.success(), "B2 fails: {}", b2.log());
    assert!(b2.log().contains("cannot listen on"), "{}", b2.log());
    drop(busy);

    // 3. A taker that connects and hangs up without a word.
    {
        let sock = dir.path().join("mtgate.handover.sock");
        let s = std::os::unix::net::UnixStream::connect(&sock).expect("control socket");
        drop(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a.exited(), "A still runs: {}", a.log());
    one_shot(addr, 7).await.expect("A still accepts");
    let log = a.log();
    assert!(!log.contains("listeners taken over"), "{log}");

    // Finally a good takeover works: rollback left the control socket usable.
    let mut c = Proc::spawn("C", dir.path(), &cfg, &["--takeover"]);
    assert_eq!(c.listening().await, Some(addr), "C: {}", c.log());
    for h in long {
        tokio::time::timeout(Duration::from_secs(20), h)
            .await
            .expect("in time")
            .expect("join")
            .unwrap_or_else(|e| panic!("long client dropped: {e:#}\nA: {}", a.log()));
    }
    let s = a.wait_exit(Duration::from_secs(10)).await.expect("A exits");
    assert!(s.success(), "{s:?}");
    let (ok, failures, _) = churn.finish().await;
    assert!(failures.is_empty(), "{failures:?}");
    assert!(ok > 20, "{ok}");
    one_shot(addr, 8).await.expect("C serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_socket_activation_readiness_and_watchdog() {
    use std::os::fd::AsRawFd;
    let dir = tempfile::tempdir().expect("tempdir");
    let dc = echo_dc().await;
    // The "systemd" side: a bound listener, and a notify socket.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let notify_path = dir.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let cfg = write_config(
        dir.path(),
        "config.toml",
        &config(dir.path(), &[&addr.to_string()], dc.local_addr(), "5s"),
    );
    // Pass the listener as fd 3 with LISTEN_PID = the pid that execs mtgate
    // (the shell's `$$`, kept across `exec`; bash, as dash only redirects fds 0..9). The duplicate given to the shell
    // must survive exec, so it is not close-on-exec.
    let dup = socket2::Socket::from(std::os::fd::OwnedFd::from(
        listener.try_clone().expect("dup"),
    ));
    dup.set_cloexec(false).expect("no cloexec");
    let fd = dup.as_raw_fd();
    let mv = if fd == 3 {
        String::new()
    } else {
        format!("exec 3<&{fd} {fd}<&-; ")
    };
    let script = format!("{mv}LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" run --no-qr --config \"$1\"");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg(BIN)
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID");
    let mut a = Proc::start("A", dir.path(), cmd);
    drop(dup);
    // mtgate could not have bound `addr` itself: the test still holds it.
    assert_eq!(a.listening().await, Some(addr), "{}", a.log());
    one_shot(addr, 1)
        .await
        .expect("serves on the inherited socket");

    let read = |until: Instant| {
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while Instant::now() < until {
            if let Ok(n) = notify.recv(&mut buf) {
                got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        got
    };
    let got = read(Instant::now() + Duration::from_millis(1500));
    assert!(got.iter().any(|m| m == "READY=1"), "{got:?}");
    let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(pings >= 3, "watchdog pings every 200 ms: {got:?}");

    a.signal("-TERM");
    let s = a.wait_exit(Duration::from_secs(10)).await.expect("exits");
    assert!(s.success(), "{s:?}");
    let got = read(Instant::now() + Duration::from_millis(300));
    assert!(got.iter().any(|m| m == "STOPPING=1"), "{got:?}");
    // The socket was systemd's: it stays open (here, in the test) after mtgate exits.
    assert!(std::net::TcpStream::connect(addr).is_ok());
    drop(listener);
}

/// The inodes of the sockets listening on `port` on 127.0.0.1 (from /proc/net/tcp).
fn listening_inodes(port: u16) -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let want = format!("0100007F:{port:04X}");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&want.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_listeners_are_handed_over() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dc = echo_dc().await;
    let ws_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let text = format!(
        "{}[websocket]\nlisten = [\"127.0.0.1:{ws_port}\"]\n",
        config(dir.path(), &["127.0.0.1:0"], dc.local_addr(), "5s")
    );
    let cfg = write_config(dir.path(), "config.toml", &text);
    let mut a = Proc::spawn("A", dir.path(), &cfg, &[]);
    a.listening()
        .await
        .unwrap_or_else(|| panic!("A: {}", a.log()));
    let before = listening_inodes(ws_port);
    assert_eq!(before.len(), 1, "A listens for WebSocket: {before:?}");
    let mut b = Proc::spawn("B", dir.path(), &cfg, &["--takeover"]);
    b.listening()
        .await
        .unwrap_or_else(|| panic!("B: {}\nA: {}", b.log(), a.log()));
    let s = a.wait_exit(Duration::from_secs(10)).await.expect("A exits");
    assert!(s.success(), "{s:?}");
    // The very socket A listened on is B's now: handed over, not bound anew.
    assert_eq!(listening_inodes(ws_port), before, "B: {}", b.log());
    // And it serves: a plain request gets the web answer.
    let mut c = tokio::net::TcpStream::connect(("127.0.0.1", ws_port))
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut c, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut c, &mut out),
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 404 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    b.signal("-TERM");
    let _ = b.wait_exit(Duration::from_secs(10)).await;
}
