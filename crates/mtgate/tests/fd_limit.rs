//! Issue 24: mtgate under a low descriptor limit (soft 256, hard 512). It
//! raises its soft limit to the hard one, caps its connections at what 512
//! descriptors carry ((512 − 64) / 2 = 224), and says so on its first screen
//! and in its metrics. With 224 clients relaying, the 225th connection gets
//! no answer at all (it waits in the kernel's queue: no ServerHello that a
//! missing descriptor would then cut off) until a client leaves; then it is
//! served. Nothing in the log says "Too many open files".
#![cfg(unix)]

mod common;

use common::binary::{tls_echo, write_config};
use common::key;
use common::*;
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

const CAP: usize = 224;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_capped_at_what_the_fd_limit_carries() {
    let dc = FakeDc::start("127.0.0.1:0".parse().expect("addr"), FakeDcMode::Echo)
        .await
        .expect("fake dc");
    let site = MaskSite::start(Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().expect("dir");
    let admin = free_port();
    let cfg = write_config(
        dir.path(),
        dc.local_addr(),
        site.addr,
        Some(admin),
        "learn_profile = false\n",
        "",
    );
    let log = dir.path().join("mtgate.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -Sn 256 && ulimit -Hn 512 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_mtgate"))
        .args(["run", "--no-qr", "--config"])
        .arg(&cfg)
        .env("HOME", dir.path())
        .env_remove("MTGATE_LOG")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut addr: Option<SocketAddr> = None;
    let mut first_screen = Vec::new();
    for l in lines.by_ref() {
        let l = l.expect("stdout line");
        if let Some(a) = l.strip_prefix("LISTENING ") {
            addr = a.parse().ok();
        }
        let done = l.starts_with("CONNECTIONS");
        first_screen.push(l);
        if done {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let proc = MtgateProcess {
        child,
        addr: addr.expect("listening"),
    };
    let screen = first_screen.join("\n");
    assert!(
        screen.contains(&format!(
            "CONNECTIONS at most {CAP} at once: the fd limit (512 soft, 512 hard)"
        )),
        "{screen}"
    );
    let (code, body) = http_get(admin, "/metrics").await.expect("metrics");
    assert_eq!(code, 200);
    assert_eq!(metric(&body, "mtgate_connections_max"), Some(CAP as f64));
    assert_eq!(metric(&body, "mtgate_fd_limit"), Some(512.0));

    // 224 clients relaying: the cap is reached.
    let mut held = Vec::new();
    for i in 0..CAP {
        held.push(tls_echo(proc.addr, i).await.expect("within the cap"));
    }
    // The next one: not a byte back, no ServerHello, no reset.
    let mut over = tokio::net::TcpStream::connect(proc.addr)
        .await
        .expect("queued");
    let hello =
        mtgate_proto::faketls::build_client_hello(&key(), DOMAIN, unix_now(), &[5; 64], 1800);
    tokio::io::AsyncWriteExt::write_all(&mut over, &hello)
        .await
        .expect("hello");
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::io::AsyncReadExt::read(&mut over, &mut buf),
    )
    .await;
    assert!(r.is_err(), "over the cap, nothing is answered: {r:?}");
    drop(over);
    // One client leaves: a new one is served.
    drop(held.pop());
    let c = tokio::time::timeout(Duration::from_secs(10), tls_echo(proc.addr, 999))
        .await
        .expect("served once a slot is free")
        .expect("relays");
    drop(c);
    drop(held);
    drop(proc);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!text.contains("Too many open files"), "{text}");
    assert!(
        text.contains("the fd limit lowers the connection cap"),
        "{text}"
    );
}
