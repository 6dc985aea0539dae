//! Subprocesses under test and what `/proc` says about them.
//!
//! * [`Proxy`]: a child process (mtgate, or this binary's own `relay`
//!   subcommand) that prints `LISTENING <addr>` on stdout once bound. The bench
//!   waits for that line (bounded), drains the rest of stdout in a thread, sends
//!   stderr to a log file, and kills the child on drop. The child also gets
//!   `PR_SET_PDEATHSIG`, so it dies if the bench dies.
//! * [`cpu_seconds`], [`rss_bytes`]: utime+stime from `/proc/PID/stat` and
//!   `VmRSS` from `/proc/PID/status`.
//! * [`raise_nofile`]: lifts `RLIMIT_NOFILE` (children inherit it).
//! * [`Machine`]: nproc, CPU model and kernel, for the report.

use anyhow::{bail, Context as _};
use serde::Serialize;
use std::io::{BufRead as _, BufReader, Read as _};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running child that serves on `addr`.
pub struct Proxy {
    child: Child,
    pub addr: SocketAddr,
    pub pid: u32,
    /// What it is, for messages.
    pub name: String,
    log: PathBuf,
}

impl Proxy {
    /// Spawns `cmd` (stdout piped, stderr to `log`) and waits up to `wait` for
    /// its first `LISTENING <addr>` line.
    pub fn spawn(mut cmd: Command, name: &str, log: &Path, wait: Duration) -> anyhow::Result<Self> {
        let err =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(err);
        // SAFETY: prctl is async-signal-safe; nothing else runs in the closure.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let pid = child.id();
        let out = child.stdout.take().context("no stdout pipe")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(out);
            let mut line = String::new();
            let mut sent = false;
            loop {
                line.clear();
                match r.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if !sent {
                            if let Some(a) = line.trim().strip_prefix("LISTENING ") {
                                sent = tx.send(a.to_owned()).is_ok();
                            }
                        }
                    }
                }
            }
        });
        let mut p = Proxy {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            pid,
            name: name.to_owned(),
            log: log.to_owned(),
        };
        match rx.recv_timeout(wait) {
            Ok(a) => {
                p.addr = a
                    .parse()
                    .with_context(|| format!("{name}: bad LISTENING address {a:?}"))?;
                Ok(p)
            }
            Err(_) => {
                let status = p.child.try_wait().ok().flatten();
                bail!(
                    "{name} did not print LISTENING within {wait:?} (exit status {status:?}); its stderr:\n{}",
                    p.log_tail()
                )
            }
        }
    }

    /// The last lines of the child's stderr log.
    pub fn log_tail(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Whether the child is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// utime + stime of process `pid` in seconds (all its threads, live and dead).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = s
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("bad /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<u64>()? as f64)
    };
    Ok((ticks(11)? + ticks(12)?) / clock_ticks())
}

/// Busy CPU seconds of the whole machine (all CPUs; everything but idle and
/// iowait) from `/proc/stat`.
pub fn machine_busy_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(l) = s.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = l
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    busy as f64 / clock_ticks()
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0)
}

/// CPU seconds of this process.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// `VmRSS` of process `pid` in bytes.
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    for l in s.lines() {
        if let Some(v) = l.strip_prefix("VmRSS:") {
            let kb: u64 = v.trim().trim_end_matches("kB").trim().parse()?;
            return Ok(kb * 1024);
        }
    }
    bail!("no VmRSS in /proc/{pid}/status")
}

/// Kernel TCP memory in use (pages × page size) from `/proc/net/sockstat`.
pub fn tcp_kernel_mem() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let l = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = l.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            let pages: u64 = it.next()?.parse().ok()?;
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
            return Some(pages * page);
        }
    }
    None
}

/// Raises `RLIMIT_NOFILE` to at least `want` (the hard limit too, when allowed);
/// returns the soft limit now in force.
pub fn raise_nofile(want: u64) -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: r is a valid rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
        return 1024;
    }
    if r.rlim_cur >= want {
        return r.rlim_cur;
    }
    let both = libc::rlimit {
        rlim_cur: want,
        rlim_max: r.rlim_max.max(want),
    };
    // SAFETY: valid rlimit values.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &both) } == 0 {
        return want;
    }
    let soft = libc::rlimit {
        rlim_cur: r.rlim_max,
        rlim_max: r.rlim_max,
    };
    // SAFETY: valid rlimit values.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &soft) } == 0 {
        return r.rlim_max;
    }
    r.rlim_cur
}

/// The machine the numbers come from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub mem_total_gib: f64,
}

impl Machine {
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let mem_total_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                let l = s.lines().find(|l| l.starts_with("MemTotal:"))?.to_owned();
                l.split_whitespace().nth(1)?.parse::<f64>().ok()
            })
            .map(|kb| kb / (1024.0 * 1024.0))
            .unwrap_or(0.0);
        Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel,
            mem_total_gib,
        }
    }
}
