//! `mtgate audit` finds suspicious access patterns from what the running
//! proxy saw: real clients from many loopback addresses share one user's
//! link past its `max_ips`, and a recorded handshake of that link is
//! replayed; the proxy saves its access watch (and when each secret came
//! into use) in the state directory and the audit, run as the operator's
//! cron would, reports both (and a secret past its maximum age).

use mtgate_testkit::client::ObfsClient;
use mtgate_testkit::conf::{dcs_table, TLS_NO_FRONTING};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

const SECRET: &str = "7d1f0c9a5be24e3186a0f4c2d9b8e617";
const REPLAYS: usize = 10;

async fn open(addr: SocketAddr, from: &str, init: Option<[u8; 64]>) -> Option<ObfsClient> {
    common::clients::dd_relays(addr, SECRET, Some(from), init).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reports_a_shared_link_and_replays_of_it() {
    let run = async {
        let dc = FakeDc::start("127.0.0.1:0".parse().unwrap(), FakeDcMode::Echo)
            .await
            .expect("fake dc");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mtgate.toml");
        let text = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\n\
             handshake_timeout = \"2s\"\nstate_dir = \"{}\"\nwatch_config = false\n\
             [admin]\nenabled = false\n{TLS_NO_FRONTING}\
             [policy]\nrefuse_action = \"close\"\npersist_interval = \"200ms\"\n{}\
             [users.alice]\nsecret = \"{SECRET}\"\nmodes = [\"dd\"]\n\
             [users.alice.limits]\nmax_ips = 1\n",
            dir.path().display(),
            dcs_table(&[dc.local_addr()])
        );
        std::fs::write(&path, text).expect("write config");
        let proxy = common::MtgateProcess::spawn(&path, dir.path(), std::process::Stdio::null());

        // The owner's client, held open, and one recorded handshake of it.
        let init = [0x5a; 64];
        let owner = open(proxy.addr, "127.0.0.2", Some(init))
            .await
            .expect("the owner relays");
        // Seven more addresses with the same link: refused by max_ips = 1.
        for i in 3..=9 {
            let from = format!("127.0.0.{i}");
            assert!(
                open(proxy.addr, &from, None).await.is_none(),
                "{from} is past max_ips"
            );
        }
        // The recorded handshake replayed from elsewhere: refused each time.
        for i in 1..=REPLAYS {
            let from = format!("127.0.1.{i}");
            assert!(
                open(proxy.addr, &from, Some(init)).await.is_none(),
                "replay from {from} refused"
            );
        }
        drop(owner);

        // The watch reaches the state file within a few write intervals.
        let state = dir.path().join("policy-state.json");
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            if text.contains(&format!("\"probes\": {REPLAYS}")) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the access watch never reached {}: {text}",
                state.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // The proxy keeps when each secret came into use; a year and more
        // later (the file's start moved back, as time would), the audit
        // finds the secret past its maximum age.
        let ages = dir.path().join("secret-ages.json");
        let saved: std::collections::BTreeMap<String, u64> = loop {
            if let Some(m) = std::fs::read(&ages)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
            {
                break m;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "no {}",
                ages.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(saved.len(), 1, "{saved:?}");
        let id = saved.keys().next().expect("alice's secret").clone();
        let old: std::collections::BTreeMap<_, _> = saved
            .iter()
            .map(|(k, v)| (k.clone(), v - 400 * 86_400))
            .collect();
        std::fs::write(&ages, serde_json::to_vec(&old).unwrap()).unwrap();

        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mtgate"))
            .args(["audit", "--config"])
            .arg(&path)
            .output()
            .expect("mtgate audit");
        let report = String::from_utf8_lossy(&out.stdout);
        // Eight addresses against a limit of one (linear counting is exact
        // this small, give or take a collision).
        let shared = report
            .lines()
            .find(|l| l.starts_with("[medium] user alice: about "))
            .unwrap_or_else(|| panic!("no shared-link finding:\n{report}"));
        let about: u64 = shared["[medium] user alice: about ".len()..]
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{shared}"));
        assert!((7..=9).contains(&about), "{shared}");
        assert!(shared.contains("against max_ips = 1"), "{shared}");
        assert!(
            report.contains(&format!(
                "[medium] user alice: {REPLAYS} handshakes with its secret were refused"
            )),
            "{report}"
        );
        assert!(
            report.contains(&format!(
                "[medium] user alice: secret {id} has been in use for 400 days"
            )),
            "{report}"
        );
        // Medium findings only: the audit still exits 0 (high would be 1).
        assert_eq!(out.status.code(), Some(0), "{report}");
        drop(proxy);
        dc.stop().await;
    };
    tokio::time::timeout(Duration::from_secs(90), run)
        .await
        .expect("test ran past its time limit");
}
