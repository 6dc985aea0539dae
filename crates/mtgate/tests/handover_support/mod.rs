//! Shared by the handover tests: real `mtgate run` processes (A, then B with
//! `--takeover`), their configs, a loopback echo DC and clients that check
//! every echoed byte.
#![allow(dead_code)]

use mtgate_crypto::Key16;
use mtgate_testkit::client::{ClientMode, ObfsClient};
use mtgate_testkit::conf::{dcs_table, toml_list, TLS_NO_FRONTING};
use mtgate_testkit::fake_dc::{FakeDc, FakeDcMode};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_mtgate");
pub const KEY_HEX: &str = "00112233445566778899aabbccddeeff";

/// Alice's key ([`KEY_HEX`]).
pub fn key() -> Key16 {
    mtgate_testkit::conf::key_from_hex(KEY_HEX)
}

/// A config serving user alice (dd) on `listen`, every DC at `dc`, with the
/// state (and so the handover socket) in `state`.
pub fn config(state: &Path, listen: &[&str], dc: SocketAddr, drain: &str) -> String {
    config_with_admin(state, listen, dc, drain, None)
}

/// [`config`] with the admin listener on `admin` (`None`: disabled).
pub fn config_with_admin(
    state: &Path,
    listen: &[&str],
    dc: SocketAddr,
    drain: &str,
    admin: Option<SocketAddr>,
) -> String {
    let admin = match admin {
        Some(a) => format!("listen = \"{a}\""),
        None => "enabled = false".to_string(),
    };
    let listen = toml_list(listen);
    let dcs = dcs_table(&[dc]);
    format!(
        "[server]\nlisten = {listen}\npublic_host = \"127.0.0.1\"\nstate_dir = \"{}\"\n\
         handshake_timeout = \"3s\"\ndrain_timeout = \"{drain}\"\n\
         [admin]\n{admin}\n\
         {TLS_NO_FRONTING}[users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"dd\"]\n\
         [log]\nlevel = \"debug\"\n\
         [policy.rate]\nnew_connections_per_second = 100000.0\nburst = 100000\n\
         {dcs}",
        state.display()
    )
}

pub fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write config");
    p
}

/// A running `mtgate run`, killed when dropped.
pub struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, dir: &Path, config: &Path, extra: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(["run", "--no-qr", "--config"])
            .arg(config)
            .args(extra)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID");
        Proc::start(name, dir, cmd)
    }

    pub fn start(name: &'static str, dir: &Path, mut cmd: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let mut child = cmd
            .env("MTGATE_LOG", "mtgate=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn mtgate");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Proc {
            name,
            child,
            lines: rx,
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The first `LISTENING` address, or `None` if the process exits or 20 s pass.
    pub async fn listening(&mut self) -> Option<SocketAddr> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match self.lines.try_recv() {
                Ok(l) => {
                    if let Some(a) = l.strip_prefix("LISTENING ") {
                        return a.parse().ok();
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {
                    if self.exited() {
                        return None;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(mpsc::TryRecvError::Disconnected) => return None,
            }
        }
        None
    }

    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill {sig} {}", self.name);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Process A on a fresh echo DC: `name` in `dir` with a drain timeout of
/// `drain`, listening; returns the DC, the config and A with its address.
pub async fn start_a(dir: &Path, name: &str, drain: &str) -> (FakeDc, PathBuf, Proc, SocketAddr) {
    let dc = echo_dc().await;
    let cfg = write_config(
        dir,
        name,
        &config(dir, &["127.0.0.1:0"], dc.local_addr(), drain),
    );
    let mut a = Proc::spawn("A", dir, &cfg, &[]);
    let addr = a
        .listening()
        .await
        .unwrap_or_else(|| panic!("A: {}", a.log()));
    (dc, cfg, a, addr)
}

pub async fn echo_dc() -> FakeDc {
    FakeDc::start("127.0.0.1:0".parse().expect("addr"), FakeDcMode::Echo)
        .await
        .expect("fake dc")
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<ObfsClient> {
    ObfsClient::connect(addr, &key(), ClientMode::Secure, 2).await
}

/// One echo round trip with a message unique to (`who`, `round`).
pub async fn round_trip(c: &mut ObfsClient, who: usize, round: usize) -> anyhow::Result<()> {
    let msg = format!("client {who:04} round {round:06} ").repeat(4);
    c.echo_round_trip(msg.as_bytes(), Duration::from_secs(5))
        .await
}

/// A fresh connection and one round trip, bounded.
pub async fn one_shot(addr: SocketAddr, who: usize) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = connect(addr).await?;
        round_trip(&mut c, who, 0).await
    })
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))?
}

/// Long-lived clients: each connects, then does `rounds` round trips `pause` apart.
pub fn spawn_long_clients(
    addr: SocketAddr,
    n: usize,
    rounds: usize,
    pause: Duration,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Instant>>> {
    (0..n)
        .map(|who| {
            tokio::spawn(async move {
                let mut c = connect(addr).await?;
                for r in 0..rounds {
                    round_trip(&mut c, who, r)
                        .await
                        .map_err(|e| anyhow::anyhow!("client {who} round {r}: {e:#}"))?;
                    tokio::time::sleep(pause).await;
                }
                Ok(Instant::now())
            })
        })
        .collect()
}

/// Opens a new connection (with one round trip) every few ms until stopped;
/// returns (successes, failures with their errors, successes after `mark`).
pub struct Churn {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    ok_after_mark: Arc<AtomicUsize>,
    mark: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Churn {
    pub fn start(addr: SocketAddr) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let ok_after_mark = Arc::new(AtomicUsize::new(0));
        let mark = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let (s, o, oam, m, f) = (
            stop.clone(),
            ok.clone(),
            ok_after_mark.clone(),
            mark.clone(),
            failures.clone(),
        );
        let task = tokio::spawn(async move {
            let mut inflight = tokio::task::JoinSet::new();
            let mut who = 1000;
            while !s.load(Ordering::SeqCst) {
                who += 1;
                let (o, oam, m, f) = (o.clone(), oam.clone(), m.clone(), f.clone());
                let marked = m.load(Ordering::SeqCst);
                inflight.spawn(async move {
                    match one_shot(addr, who).await {
                        Ok(()) => {
                            o.fetch_add(1, Ordering::SeqCst);
                            if marked {
                                oam.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(e) => f
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(format!("connection {who}: {e:#}")),
                    }
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            while inflight.join_next().await.is_some() {}
        });
        Churn {
            stop,
            ok,
            ok_after_mark,
            mark,
            failures,
            task,
        }
    }

    pub fn mark(&self) {
        self.mark.store(true, Ordering::SeqCst);
    }

    pub async fn finish(self) -> (usize, Vec<String>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("churn ends")
            .expect("churn task");
        let f = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (
            self.ok.load(Ordering::SeqCst),
            f,
            self.ok_after_mark.load(Ordering::SeqCst),
        )
    }
}
