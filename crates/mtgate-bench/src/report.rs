//! Results, targets and output: the JSON document and the printed table.
//!
//! Every measurement lands in [`Report`] (serialised as-is with `--json`). The
//! targets of the performance issue are evaluated as ratios within one run
//! ([`Report::evaluate`], in `targets.rs`) and printed with PASS/FAIL; a missed target is a
//! measurement, never an error. A test that could not produce a number is
//! recorded in `errors` and makes the harness exit non-zero.

use crate::procs::Machine;
use serde::Serialize;
use std::fmt::Write as _;

#[derive(Clone, Debug, Serialize)]
pub struct BulkResult {
    pub target: String,
    pub conns: usize,
    pub secs: f64,
    /// Payload bytes echoed back to the clients in the window.
    pub echoed_bytes: u64,
    /// Echoed payload per second (one direction), 10^6 bytes.
    pub mb_per_s: f64,
    pub proxy_cpu_s: Option<f64>,
    /// Proxy CPU seconds per wall second (2.0 = both cores).
    pub proxy_cpu_util: Option<f64>,
    /// Proxy CPU seconds per 10^9 bytes relayed (both directions counted).
    pub proxy_cpu_s_per_gb: Option<f64>,
    pub loadgen_cpu_util: f64,
    /// CPU used by neither (other processes, unattributed kernel work).
    pub other_cpu_util: Option<f64>,
    pub failed_conns: u64,
    /// MB/s of every round, in order (this result is the median round).
    pub rounds: Vec<f64>,
    /// Proxy CPU-s/GB of every round, in order (null where unknown).
    pub rounds_cpu_s_per_gb: Vec<Option<f64>>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HandshakeResult {
    pub target: String,
    pub concurrency: usize,
    pub secs: f64,
    pub completed: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// Completed cycles per wall second.
    pub per_s: f64,
    pub proxy_cpu_s: Option<f64>,
    /// Completed cycles per proxy CPU second ("per core").
    pub per_proxy_cpu_s: Option<f64>,
    pub loadgen_cpu_util: f64,
    pub other_cpu_util: Option<f64>,
    /// Cycles per second of every round, in order (this result is the median round).
    pub rounds: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LatencyResult {
    pub target: String,
    pub conns: usize,
    pub msgs_per_s: f64,
    pub msg_len: usize,
    pub samples: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub proxy_cpu_util: Option<f64>,
    /// Busy CPU of the whole machine (both tests of the pair and everything else).
    pub machine_cpu_util: f64,
    /// The target measured at the same time (relay rows: the subject; subject rows: the relay).
    pub paired_with: Option<String>,
    /// p99 of every round, in order (this result is the median round by p99).
    pub rounds: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    pub target: String,
    pub conns: usize,
    pub open_secs: f64,
    pub rss_before: u64,
    pub rss_after: u64,
    pub rss_per_conn: f64,
    /// System-wide kernel TCP memory growth per connection (all four sockets
    /// of a relayed connection; not part of any RSS).
    pub kernel_tcp_mem_per_conn: Option<f64>,
    pub checked_round_trips: usize,
}

/// Memory before and after many connections opened and closed (leak check).
#[derive(Clone, Debug, Serialize)]
pub struct LeakResult {
    pub target: String,
    /// Connect + handshake + round trip + close cycles after the warm-up.
    pub cycles: u64,
    pub warmup_cycles: u64,
    pub secs: f64,
    pub rss_before: u64,
    pub rss_after: u64,
}

impl LeakResult {
    /// Growth allowed for allocator noise: 1 MiB, or 5 % of the baseline.
    pub fn allowance(&self) -> u64 {
        (1u64 << 20).max(self.rss_before / 20)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Scaling {
    /// ee bulk throughput with 16 connections: 1 and 2 worker threads.
    pub bulk_1: Option<BulkResult>,
    pub bulk_2: Option<BulkResult>,
    /// Worker threads of the many-worker run (the other has 1).
    pub workers: usize,
    pub handshakes_1: Option<HandshakeResult>,
    pub handshakes_2: Option<HandshakeResult>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub goal: String,
    /// With several rounds: the median of the per-round ratios (each round's
    /// subject against the relay of the same round); else the ratio of the values.
    pub ratio: Option<f64>,
    /// The per-round ratios, in round order (empty with one round).
    pub round_ratios: Vec<f64>,
    /// `None` when it could not be evaluated (a number is missing).
    pub pass: Option<bool>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub smoke: bool,
    pub external_target: Option<String>,
    pub proxy_workers: usize,
    pub loadgen_threads: usize,
    pub fronting: bool,
    /// mtgate ran with its own site (`--site`).
    pub site: bool,
    pub bulk_secs: f64,
    pub bulk_max_bytes: u64,
    pub handshake_concurrency: usize,
    pub latency_conns: usize,
    pub latency_rate_per_conn: u32,
    pub latency_msg_len: usize,
    pub idle_conns: usize,
    /// What was asked for; `idle_conns` is less when RLIMIT_NOFILE cannot be
    /// raised far enough (the proxy and the bench each need 2 fds per connection).
    pub idle_conns_requested: usize,
    pub rounds: usize,
    pub nofile_limit: u64,
    /// 1-minute load average when the run started (other work on the machine).
    pub loadavg_at_start: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub aes_ctr_gb_per_s: Option<f64>,
    pub bulk: Vec<BulkResult>,
    pub handshakes: Vec<HandshakeResult>,
    pub latency: Vec<LatencyResult>,
    pub idle: Option<IdleResult>,
    pub leak: Option<LeakResult>,
    pub scaling: Option<Scaling>,
    pub targets: Vec<Target>,
    pub errors: Vec<String>,
    pub total_secs: f64,
}

impl Report {
    /// The relay's latency measured alongside `subject`.
    pub(crate) fn relay_lat_with(&self, subject: &str) -> Option<&LatencyResult> {
        self.latency
            .iter()
            .find(|l| l.target == "relay" && l.paired_with.as_deref() == Some(subject))
            .or_else(|| self.lat_of("relay"))
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let mut o = String::new();
        let m = &self.machine;
        let _ = writeln!(
            o,
            "machine: {} CPUs, {}, kernel {}, {:.1} GiB",
            m.nproc, m.cpu_model, m.kernel, m.mem_total_gib
        );
        let s = &self.settings;
        let _ = writeln!(
            o,
            "settings: {}proxy workers {}, load generator threads {}, fronting {}, {} round(s) (median shown), load average at start {:.2}",
            if s.smoke { "SMOKE, " } else { "" },
            s.proxy_workers,
            s.loadgen_threads,
            match (s.fronting, s.site) {
                (true, true) => "to the own site ([site], loopback)",
                (true, false) => "on (local mask sink)",
                (false, _) => "off",
            },
            s.rounds,
            s.loadavg_at_start
        );
        let _ = writeln!(o, "CPU columns: CPU-seconds per second (2.00 = both cores); \"other\" = neither proxy nor bench (other processes, unattributed softirq)");
        if let Some(a) = self.aes_ctr_gb_per_s {
            let _ = writeln!(o, "AES-256-CTR (mtgate_crypto::AesCtr, 16 KiB buffers, 1 thread): {a:.2} GB/s = {:.3} CPU-s per GB per pass", 1.0 / a);
        }
        if !self.bulk.is_empty() {
            let _ = writeln!(o, "\nbulk echo throughput (MB/s of payload each way; CPU/GB over bytes relayed in both directions)");
            let _ = writeln!(
                o,
                "{:<16} {:>6} {:>10} {:>10} {:>10} {:>8} {:>6} {:>5}",
                "target", "conns", "MB/s", "proxy CPU", "CPU-s/GB", "loadgen", "other", "fail"
            );
            for b in &self.bulk {
                let _ = writeln!(
                    o,
                    "{:<16} {:>6} {:>10.1} {:>10} {:>10} {:>8.2} {:>6} {:>5}",
                    b.target,
                    b.conns,
                    b.mb_per_s,
                    opt(b.proxy_cpu_util, 2),
                    opt(b.proxy_cpu_s_per_gb, 3),
                    b.loadgen_cpu_util,
                    opt(b.other_cpu_util, 2),
                    b.failed_conns
                );
            }
        }
        if !self.handshakes.is_empty() {
            let _ = writeln!(o, "\nconnect + handshake + first round trip + close");
            let _ = writeln!(
                o,
                "{:<16} {:>6} {:>8} {:>15} {:>10} {:>8} {:>6} {:>7} {:>6}",
                "target",
                "conc.",
                "per s",
                "per proxy CPU-s",
                "proxy CPU",
                "loadgen",
                "other",
                "done",
                "errors"
            );
            for h in &self.handshakes {
                let _ = writeln!(
                    o,
                    "{:<16} {:>6} {:>8.0} {:>15} {:>10} {:>8.2} {:>6} {:>7} {:>6}",
                    h.target,
                    h.concurrency,
                    h.per_s,
                    opt(h.per_proxy_cpu_s, 0),
                    opt(h.proxy_cpu_s.map(|c| c / h.secs), 2),
                    h.loadgen_cpu_util,
                    opt(h.other_cpu_util, 2),
                    h.completed,
                    h.errors
                );
            }
        }
        if !self.latency.is_empty() {
            let l0 = &self.latency[0];
            let _ = writeln!(
                o,
                "\nround-trip latency (µs), {} B messages, {} conns × {} msg/s per target; each subject measured at the same time as the relay",
                l0.msg_len,
                l0.conns,
                self.settings.latency_rate_per_conn
            );
            let _ = writeln!(
                o,
                "{:<26} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "target", "p50", "p90", "p99", "p99.9", "max", "+p50", "+p99", "machine"
            );
            for l in &self.latency {
                let name = match (&l.paired_with, l.target == "relay") {
                    (Some(p), true) => format!("relay (with {})", p.trim_start_matches("mtgate ")),
                    _ => l.target.clone(),
                };
                let base = (l.target != "relay")
                    .then(|| self.relay_lat_with(&l.target))
                    .flatten();
                let _ = writeln!(
                    o,
                    "{:<26} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.0} {:>8} {:>8} {:>8.2}",
                    name,
                    l.p50_us,
                    l.p90_us,
                    l.p99_us,
                    l.p999_us,
                    l.max_us,
                    base.map_or("".into(), |b| format!("{:+.1}", l.p50_us - b.p50_us)),
                    base.map_or("".into(), |b| format!("{:+.1}", l.p99_us - b.p99_us)),
                    l.machine_cpu_util,
                );
            }
        }
        if let Some(i) = &self.idle {
            if self.settings.idle_conns < self.settings.idle_conns_requested {
                let _ = writeln!(
                    o,
                    "\nnote: {} idle connections instead of {}: RLIMIT_NOFILE is {} and cannot be raised (2 fds per connection in the proxy and in the bench)",
                    self.settings.idle_conns, self.settings.idle_conns_requested, self.settings.nofile_limit
                );
            }
            let _ = writeln!(
                o,
                "\nidle: {} authenticated {} connections opened in {:.1} s; proxy RSS {:.1} → {:.1} MiB = {:.0} B per connection; kernel TCP memory {} per connection (4 sockets, not in RSS); {} sampled still relay",
                i.conns,
                i.target,
                i.open_secs,
                i.rss_before as f64 / 1048576.0,
                i.rss_after as f64 / 1048576.0,
                i.rss_per_conn,
                i.kernel_tcp_mem_per_conn.map_or("n/a".into(), |b| format!("{b:.0} B")),
                i.checked_round_trips
            );
        }
        if let Some(l) = &self.leak {
            let _ = writeln!(
                o,
                "\nleak check: {} connect + handshake + round trip + close cycles on {} ({:.1} s, after {} warm-up cycles); proxy RSS {:.1} → {:.1} MiB",
                l.cycles,
                l.target,
                l.secs,
                l.warmup_cycles,
                l.rss_before as f64 / 1048576.0,
                l.rss_after as f64 / 1048576.0
            );
        }
        if !self.targets.is_empty() {
            let _ = writeln!(
                o,
                "\ntargets (ratios within this run; with rounds: median of per-round ratios, rounds in [..])"
            );
            for t in &self.targets {
                let verdict = match t.pass {
                    Some(true) => "PASS",
                    Some(false) => "FAIL",
                    None => "n/a ",
                };
                let _ = writeln!(
                    o,
                    "  {verdict}  {:<58} {:>8}  goal {:<18} {}{}",
                    t.name,
                    t.ratio.map_or("".into(), |r| format!("{r:.2}×")),
                    t.goal,
                    t.measured,
                    if t.round_ratios.is_empty() {
                        String::new()
                    } else {
                        let v: Vec<String> =
                            t.round_ratios.iter().map(|r| format!("{r:.2}")).collect();
                        format!("  [{}]", v.join(" "))
                    }
                );
            }
        }
        for e in &self.errors {
            let _ = writeln!(o, "ERROR: {e}");
        }
        let _ = writeln!(o, "\ntotal {:.0} s", self.total_secs);
        o
    }
}

pub(crate) fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.prec$}"))
}

pub(crate) fn fmt_pair(a: Option<f64>, b: Option<f64>, unit: &str) -> String {
    format!("{} vs {} {unit}", opt(a, 2), opt(b, 2))
}
