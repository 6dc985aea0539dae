//! Logs of the real binary (issue 6): JSON lines, one `conn` span per
//! connection carrying its id, peer, user and mode, the close reason on the
//! closing line, and no secret anywhere.

mod common;

use common::MtgateProcess;
use mtgate_crypto::Key16;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::conf::{dcs_table, TLS_NO_FRONTING};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::io::Read;
use std::process::Stdio;
use std::time::Duration;

const SECRET: &str = "5a5a5a5a0123456789abcdef5a5a5a5a";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_a_span_per_connection_and_no_secret() {
    let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Mtproto)
        .await
        .expect("dc");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("mtgate.toml");
    let dcs = dcs_table(&[dc.local_addr()]);
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
             handshake_timeout = \"1s\"\n[admin]\nenabled = false\n[log]\nformat = \"json\"\nlevel = \"debug\"\n\
             {TLS_NO_FRONTING}{dcs}[users.alice]\nsecret = \"{SECRET}\"\nmodes = [\"classic\", \"dd\"]\n",
            dir.path().display()
        ),
    )
    .expect("write");
    let mut p = MtgateProcess::spawn(&path, dir.path(), Stdio::piped());
    let mut stderr = p.child.stderr.take().expect("stderr");
    let key = Key16::new(hex::decode(SECRET).unwrap().try_into().unwrap());
    let mut c = ObfsClient::connect(p.addr, &key, ClientMode::Classic(ProtoTag::Intermediate), 2)
        .await
        .expect("connect");
    c.req_pq_multi().await.expect("round trip");
    drop(c);
    // A probe with garbage: closed without a user.
    let mut s = tokio::net::TcpStream::connect(p.addr).await.expect("probe");
    tokio::io::AsyncWriteExt::write_all(&mut s, &[0x55; 64])
        .await
        .expect("garbage");
    drop(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.signal("TERM");
    assert!(
        p.wait_exit(Duration::from_secs(10)).is_some(),
        "exits on SIGTERM"
    );
    let mut text = String::new();
    stderr.read_to_string(&mut text).expect("read logs");

    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty());
    let msg = |v: &serde_json::Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    let auth = lines
        .iter()
        .find(|v| msg(v) == "client authenticated")
        .expect("an authenticated line");
    let span = &auth["span"];
    assert_eq!(span["name"], "conn");
    assert!(span["id"].as_u64().is_some(), "{auth}");
    assert!(span["peer"]
        .as_str()
        .is_some_and(|p| p.starts_with("127.0.0.1:")));
    let id = span["id"].as_u64();
    let closed = lines
        .iter()
        .find(|v| msg(v) == "closed" && v["span"]["id"].as_u64() == id)
        .expect("the closing line of that connection");
    assert_eq!(closed["span"]["user"], "alice");
    assert_eq!(closed["span"]["mode"], "classic");
    assert!(closed["fields"]["reason"].as_str().is_some());
    // The probe's connection closes with a reject reason and no user.
    assert!(lines.iter().any(|v| msg(v) == "closed"
        && v["span"]["user"].is_null()
        && v["fields"]["reason"] == "bad_obfs2"));
    // No secret, in any form, in any line.
    for needle in [SECRET, &SECRET[..16], &SECRET[16..]] {
        assert!(!text.contains(needle), "a secret leaked into the logs");
    }
}

/// Issue 24: a flood of 10 000 policy refusals and 2 000 failed handshakes
/// at the default log level, stderr to a file: a handful of lines (the
/// refusals summarised per reason and source prefix), no escape codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_leaves_a_few_plain_log_lines() {
    let site = common::nginx::Nginx::start(common::DOMAIN, Duration::from_secs(1));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = common::binary::write_config(
        dir.path(),
        "127.0.0.1:1".parse().expect("addr"),
        site.addr,
        None,
        "",
        "[policy.acl]\nrules = [ { cidr = \"127.0.0.2/32\", level = \"blocked\" } ]\n",
    );
    let log = dir.path().join("mtgate.log");
    let file = std::fs::File::create(&log).expect("log file");
    let mut p = MtgateProcess::spawn(&path, dir.path(), Stdio::from(file));
    let addr = p.addr;
    let refused: std::net::IpAddr = "127.0.0.2".parse().expect("ip");
    let failing: std::net::IpAddr = "127.0.0.3".parse().expect("ip");
    let mut set = tokio::task::JoinSet::new();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    for i in 0..12_000u32 {
        let permit = sem.clone().acquire_owned().await.expect("permit");
        let from = if i < 10_000 { refused } else { failing };
        set.spawn(async move {
            common::probe_from(
                Some(from),
                addr,
                &[b"\x05garbage\r\n\r\n".to_vec()],
                Duration::ZERO,
                true,
                Duration::from_secs(5),
            )
            .await;
            drop(permit);
        });
        while set.try_join_next().is_some() {}
    }
    while set.join_next().await.is_some() {}
    p.signal("TERM");
    assert!(p.wait_exit(Duration::from_secs(15)).is_some(), "exits");
    let bytes = std::fs::read(&log).expect("read log");
    assert!(!bytes.contains(&0x1b), "no escape codes in a log file");
    let text = String::from_utf8(bytes).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("{} log lines, {} bytes:\n{text}", lines.len(), text.len());
    assert!(
        lines.len() <= 40,
        "a flood is a few lines at INFO: {}",
        lines.len()
    );
    let summarised: u64 = lines
        .iter()
        .filter_map(|l| l.split("acl_blocked from 127.0.0.0/24: ").nth(1))
        .filter_map(|rest| rest.split(';').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(summarised, 10_000, "every refusal is in a summary line");
}
