//! The measurements themselves; each drives one [`Target`] and returns numbers.
//!
//! * [`bulk`]: N connections in raw mode, each with a writer pushing 64 KiB
//!   chunks and a reader counting echoed payload; the numbers come from a
//!   window after a warm-up. Throughput counts echoed payload per second (one
//!   direction); "GB relayed" counts both directions (each echoed byte crosses
//!   the proxy twice), so CPU/GB compares with two AES passes per byte.
//! * [`handshakes`]: workers that connect, handshake, do the first verified
//!   round trip and close, as fast as they can.
//! * [`latency`]: paced verified round trips of small messages.
//! * [`idle`]: opens N authenticated connections and reads the proxy's RSS.
//! * [`aes_speed`]: `mtgate_crypto::AesCtr` over 16 KiB buffers.
//!
//! Everything is bounded: connects and tests run under timeouts, and a test
//! that cannot finish returns an error instead of hanging.

use crate::client::{bulk_chunk, connect, Conn, RecordCounter, Target};
use crate::procs;
use crate::report::{BulkResult, HandshakeResult, IdleResult, LatencyResult};
use anyhow::{bail, Context as _};
use mtgate_crypto::{fill_random, AesCtr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::Notify;
use tokio::task::JoinSet;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);

/// CPU seconds of the proxy (if known) and of the bench itself.
#[derive(Clone, Copy)]
struct CpuMark {
    proxy: Option<f64>,
    own: f64,
    machine: f64,
    at: Instant,
}

impl CpuMark {
    /// CPU seconds per wall second used by neither the proxy nor the bench
    /// between `self` and `later` (other processes, unattributed softirq work).
    fn other_util(&self, later: &CpuMark) -> Option<f64> {
        let secs = later.at.duration_since(self.at).as_secs_f64();
        let proxy = later.proxy? - self.proxy?;
        let rest = (later.machine - self.machine) - proxy - (later.own - self.own);
        Some((rest / secs).max(0.0))
    }
}

fn mark(pid: Option<u32>) -> CpuMark {
    CpuMark {
        proxy: pid.and_then(|p| procs::cpu_seconds(p).ok()),
        own: procs::own_cpu_seconds(),
        machine: procs::machine_busy_seconds(),
        at: Instant::now(),
    }
}

/// Opens `n` connections, `concurrency` at a time.
pub async fn connect_many(
    t: &Target,
    n: usize,
    raw: bool,
    concurrency: usize,
) -> anyhow::Result<Vec<Conn>> {
    let workers = concurrency.clamp(1, n.max(1));
    let mut set = JoinSet::new();
    for w in 0..workers {
        let share = n / workers + usize::from(w < n % workers);
        let t = t.clone();
        set.spawn(async move {
            let mut v = Vec::with_capacity(share);
            for _ in 0..share {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, connect(&t, raw))
                    .await
                    .context("connect + handshake timed out")??;
                v.push(c);
            }
            anyhow::Ok(v)
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

/// Bulk-throughput settings.
#[derive(Clone, Copy, Debug)]
pub struct BulkOpts {
    pub conns: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop the window early once this many payload bytes were echoed.
    pub max_bytes: u64,
    /// Payload bytes all connections together may have in flight.
    pub window_total: u64,
}

/// Raw echo traffic over `o.conns` connections.
pub async fn bulk(t: &Target, pid: Option<u32>, o: BulkOpts) -> anyhow::Result<BulkResult> {
    let conns = connect_many(t, o.conns, true, 64).await?;
    let tls = conns.first().is_some_and(|c| c.is_tls());
    let (chunk, payload) = bulk_chunk(tls);
    let chunk: Arc<[u8]> = chunk.into();
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    // Each writer stays at most `window` payload bytes ahead of its reader, so
    // the kernel's socket buffers (autotuned up to several MB each) cannot fill
    // up to the point of TCP memory pressure, drops and retransmit timeouts.
    let window = o.window_total / o.conns.max(1) as u64;
    let window = window
        .clamp(256 << 10, (2 << 20).max(window))
        .max(2 * payload as u64);
    let mut set = JoinSet::new();
    for c in conns {
        let (mut rd, mut wr) = c.stream.into_split();
        let got = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Notify::new());
        let (stop_w, chunk, fail_w, got_w, wake_w) = (
            stop.clone(),
            chunk.clone(),
            failures.clone(),
            got.clone(),
            wake.clone(),
        );
        set.spawn(async move {
            let mut sent = 0u64;
            while !stop_w.load(Relaxed) {
                if sent.saturating_sub(got_w.load(Relaxed)) + payload as u64 > window {
                    wake_w.notified().await;
                    continue;
                }
                if wr.write_all(&chunk).await.is_err() {
                    if !stop_w.load(Relaxed) {
                        fail_w.fetch_add(1, Relaxed);
                    }
                    return;
                }
                sent += payload as u64;
            }
            let _ = wr.shutdown().await;
        });
        let (stop_r, echoed, fail_r) = (stop.clone(), echoed.clone(), failures.clone());
        set.spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut counter = RecordCounter::default();
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if !stop_r.load(Relaxed) {
                            fail_r.fetch_add(1, Relaxed);
                        }
                        // Let a waiting writer see the end.
                        got.store(u64::MAX / 2, Relaxed);
                        wake.notify_one();
                        return;
                    }
                    Ok(n) => {
                        let p = if tls { counter.feed(&buf[..n]) } else { n };
                        echoed.fetch_add(p as u64, Relaxed);
                        got.fetch_add(p as u64, Relaxed);
                        wake.notify_one();
                    }
                }
            }
        });
    }
    tokio::time::sleep(o.warmup).await;
    let b0 = echoed.load(Relaxed);
    let m0 = mark(pid);
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if m0.at.elapsed() >= o.duration || echoed.load(Relaxed) - b0 >= o.max_bytes {
            break;
        }
        if failures.load(Relaxed) as usize >= o.conns {
            break;
        }
    }
    let b1 = echoed.load(Relaxed);
    let m1 = mark(pid);
    stop.store(true, Relaxed);
    let drain = async { while set.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
    set.abort_all();
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    let bytes = b1 - b0;
    let relayed_gb = 2.0 * bytes as f64 / 1e9;
    let proxy_cpu = match (m0.proxy, m1.proxy) {
        // Zero ticks (a window shorter than the clock tick) tells nothing.
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    if bytes == 0 {
        bail!(
            "{}: no bytes echoed with {} connections ({} connections failed)",
            t.label,
            o.conns,
            failures.load(Relaxed)
        );
    }
    Ok(BulkResult {
        target: t.label.clone(),
        conns: o.conns,
        secs,
        echoed_bytes: bytes,
        mb_per_s: bytes as f64 / 1e6 / secs,
        proxy_cpu_s: proxy_cpu,
        proxy_cpu_util: proxy_cpu.map(|c| c / secs),
        proxy_cpu_s_per_gb: proxy_cpu.map(|c| c / relayed_gb),
        loadgen_cpu_util: (m1.own - m0.own) / secs,
        other_cpu_util: m0.other_util(&m1),
        failed_conns: failures.load(Relaxed),
        rounds: Vec::new(),
        rounds_cpu_s_per_gb: Vec::new(),
    })
}

/// Connect–handshake–round-trip–close cycles for `duration` (or `max` cycles).
pub async fn handshakes(
    t: &Target,
    pid: Option<u32>,
    concurrency: usize,
    duration: Duration,
    max: u64,
) -> anyhow::Result<HandshakeResult> {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let last_err = Arc::new(Mutex::new(None::<String>));
    let m0 = mark(pid);
    let mut set = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (t, stop, ok, errors, last_err) = (
            t.clone(),
            stop.clone(),
            ok.clone(),
            errors.clone(),
            last_err.clone(),
        );
        set.spawn(async move {
            while !stop.load(Relaxed) && ok.load(Relaxed) < max {
                match tokio::time::timeout(CONNECT_TIMEOUT, connect(&t, false)).await {
                    Ok(Ok(c)) => {
                        drop(c);
                        ok.fetch_add(1, Relaxed);
                    }
                    Ok(Err(e)) => {
                        errors.fetch_add(1, Relaxed);
                        *last_err.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(format!("{e:#}"));
                    }
                    Err(_) => {
                        errors.fetch_add(1, Relaxed);
                    }
                }
            }
        });
    }
    loop {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if m0.at.elapsed() >= duration || ok.load(Relaxed) >= max {
            break;
        }
    }
    let n = ok.load(Relaxed);
    let m1 = mark(pid);
    stop.store(true, Relaxed);
    let drain = async { while set.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(CONNECT_TIMEOUT + Duration::from_secs(1), drain).await;
    set.abort_all();
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    let errs = errors.load(Relaxed);
    let last = last_err.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if n == 0 {
        bail!(
            "{}: no handshake completed ({errs} failed; last error: {last:?})",
            t.label
        );
    }
    let proxy_cpu = match (m0.proxy, m1.proxy) {
        // Zero ticks (a window shorter than the clock tick) tells nothing.
        (Some(a), Some(b)) if b > a => Some(b - a),
        _ => None,
    };
    Ok(HandshakeResult {
        target: t.label.clone(),
        concurrency,
        secs,
        completed: n,
        errors: errs,
        last_error: last,
        per_s: n as f64 / secs,
        proxy_cpu_s: proxy_cpu,
        per_proxy_cpu_s: proxy_cpu.filter(|c| *c > 0.0).map(|c| n as f64 / c),
        loadgen_cpu_util: (m1.own - m0.own) / secs,
        other_cpu_util: m0.other_util(&m1),
        rounds: Vec::new(),
    })
}

/// Latency settings: `conns` connections, each sending `msg_len`-byte messages
/// `rate` times a second, measured after `warmup` for `duration`.
#[derive(Clone, Copy, Debug)]
pub struct LatencyOpts {
    pub conns: usize,
    pub rate: u32,
    pub msg_len: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// Paced, verified round trips; percentiles of the round-trip time.
pub async fn latency(
    t: &Target,
    pid: Option<u32>,
    o: LatencyOpts,
) -> anyhow::Result<LatencyResult> {
    let conns = connect_many(t, o.conns, false, 16).await?;
    let period = Duration::from_secs_f64(1.0 / f64::from(o.rate.max(1)));
    let start = Instant::now() + o.warmup;
    let end = start + o.duration;
    let m0 = mark(pid);
    let mut set = JoinSet::new();
    let n = conns.len();
    for (i, mut c) in conns.into_iter().enumerate() {
        let offset = period.mul_f64(i as f64 / n as f64);
        set.spawn(async move {
            let mut msg = vec![0u8; o.msg_len];
            let mut scratch = Vec::with_capacity(o.msg_len);
            let mut rtts: Vec<u32> = Vec::new();
            tokio::time::sleep(offset).await;
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let now = Instant::now();
                if now >= end {
                    return anyhow::Ok(rtts);
                }
                fill_random(&mut msg);
                c.round_trip(&msg, &mut scratch).await?;
                if now >= start {
                    rtts.push(now.elapsed().as_nanos().min(u32::MAX as u128) as u32);
                }
            }
        });
    }
    let mut all = Vec::new();
    let limit = o.warmup + o.duration + Duration::from_secs(10);
    let collect = async {
        while let Some(r) = set.join_next().await {
            all.extend(r??);
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(limit, collect)
        .await
        .context("latency test did not finish in time")??;
    let m1 = mark(pid);
    if all.is_empty() {
        bail!("{}: no latency samples", t.label);
    }
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len()) - 1;
        f64::from(all[i]) / 1000.0
    };
    let secs = m1.at.duration_since(m0.at).as_secs_f64();
    Ok(LatencyResult {
        target: t.label.clone(),
        conns: o.conns,
        msgs_per_s: all.len() as f64 / o.duration.as_secs_f64(),
        msg_len: o.msg_len,
        samples: all.len(),
        p50_us: pct(0.50),
        p90_us: pct(0.90),
        p99_us: pct(0.99),
        p999_us: pct(0.999),
        max_us: f64::from(all[all.len() - 1]) / 1000.0,
        proxy_cpu_util: match (m0.proxy, m1.proxy) {
            (Some(a), Some(b)) => Some((b - a) / secs),
            _ => None,
        },
        machine_cpu_util: (m1.machine - m0.machine) / secs,
        paired_with: None,
        rounds: Vec::new(),
    })
}

/// Opens `n` authenticated connections after `warm` warm-up ones and reads the
/// proxy's RSS before and after (needs the proxy's pid).
pub async fn idle(
    t: &Target,
    pid: u32,
    n: usize,
    warm: usize,
    hold: Duration,
) -> anyhow::Result<IdleResult> {
    let warm_conns = connect_many(t, warm, false, 16).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = procs::rss_bytes(pid)?;
    let sock0 = procs::tcp_kernel_mem();
    let started = Instant::now();
    let mut conns = connect_many(t, n, false, 64).await?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss1 = procs::rss_bytes(pid)?;
    let sock1 = procs::tcp_kernel_mem();
    // Prove a sample of them is still relaying.
    let mut scratch = Vec::new();
    let step = (conns.len() / 10).max(1);
    let mut checked = 0;
    for c in conns.iter_mut().step_by(step) {
        tokio::time::timeout(
            Duration::from_secs(10),
            c.round_trip(b"still here?", &mut scratch),
        )
        .await
        .context("idle connection round trip timed out")??;
        checked += 1;
    }
    if !hold.is_zero() {
        eprintln!("[bench] holding {n} idle connections to pid {pid} for {hold:?}");
        tokio::time::sleep(hold).await;
    }
    drop(conns);
    drop(warm_conns);
    Ok(IdleResult {
        target: t.label.clone(),
        conns: n,
        open_secs,
        rss_before: rss0,
        rss_after: rss1,
        rss_per_conn: (rss1 as f64 - rss0 as f64) / n as f64,
        kernel_tcp_mem_per_conn: match (sock0, sock1) {
            (Some(a), Some(b)) => Some((b as f64 - a as f64) / n as f64),
            _ => None,
        },
        checked_round_trips: checked,
    })
}

/// AES-256-CTR speed of `mtgate_crypto::AesCtr` over 16 KiB buffers, in GB/s.
pub fn aes_speed(duration: Duration) -> f64 {
    let mut key = [0u8; 32];
    let mut iv = [0u8; 16];
    fill_random(&mut key);
    fill_random(&mut iv);
    let mut c = AesCtr::new(&key, &iv);
    let mut buf = vec![0u8; 16 * 1024];
    // Warm up (page in, clocks up).
    for _ in 0..256 {
        c.apply(&mut buf);
    }
    let t = Instant::now();
    let mut bytes = 0u64;
    loop {
        for _ in 0..64 {
            c.apply(std::hint::black_box(&mut buf));
        }
        bytes += 64 * buf.len() as u64;
        if t.elapsed() >= duration {
            break;
        }
    }
    bytes as f64 / 1e9 / t.elapsed().as_secs_f64()
}
