//! The run: which processes start, in which order the tests go, and with which
//! sizes (full or `--smoke`).
//!
//! Self mode: AES speed; the idle-memory test on a fresh mtgate; then the
//! relay and mtgate side by side in rounds ([`crate::matrix`]: bulk for each
//! connection count across relay, classic, dd and ee; latency; handshakes);
//! then N vs 1 worker threads (the N-worker mtgate, then a fresh 1-worker one). Target mode (`--target`) runs the same load against an
//! already-running proxy and the relay, with CPU and memory only if
//! `--target-pid` is given.
//!
//! mtgate gets a config written into a temporary directory: loopback listener,
//! one user allowed every mode, `[dcs] 2` = the echo DC, FakeTLS domain
//! `bench.example`, fronting to a local mask sink (or off with
//! `--no-fronting`, or to mtgate's own site with `--site`), log level `warn`
//! (stderr goes to a file).

use crate::client::{Mode, Target};
use crate::load::{self, BulkOpts, LatencyOpts};
use crate::procs::{self, Machine, Proxy};
use crate::report::{Report, Scaling, Settings};
use crate::{dc, matrix, Args};
use anyhow::{bail, Context as _};
use mtgate_crypto::Key16;
use mtgate_proto::{ProxySecret, SecretKind};
use std::future::Future;
use std::net::{SocketAddr, ToSocketAddrs as _};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

mod link;

const DOMAIN: &str = "bench.example";
const START_WAIT: Duration = Duration::from_secs(30);

/// Sizes of one run.
struct Plan {
    bulk: BulkOpts,
    hs_secs: Duration,
    hs_max: u64,
    latency: LatencyOpts,
    idle_conns: usize,
    idle_requested: usize,
    aes_secs: Duration,
    rounds: usize,
}

impl Plan {
    fn new(a: &Args, nofile: u64) -> Self {
        let s = a.smoke;
        let secs = Duration::from_secs_f64(a.secs.unwrap_or(if s { 1.0 } else { 2.0 }));
        // The bench holds a client and a DC socket per idle connection.
        let fd_room = (nofile.saturating_sub(200) / 2) as usize;
        let idle_requested = a.idle_conns.unwrap_or(if s { 200 } else { 10_000 });
        Plan {
            bulk: BulkOpts {
                conns: 1,
                warmup: Duration::from_millis(if s { 100 } else { 500 }),
                duration: Duration::from_secs_f64(a.bulk_secs.unwrap_or(if s { 1.0 } else { 2.0 })),
                max_bytes: if s { 2_000_000 } else { u64::MAX },
                window_total: a.bulk_window_mib.max(1) << 20,
            },
            hs_secs: secs,
            hs_max: if s { 20 } else { u64::MAX },
            latency: LatencyOpts {
                conns: 16,
                rate: 100,
                msg_len: 256,
                warmup: Duration::from_millis(if s { 100 } else { 500 }),
                duration: if s { Duration::from_millis(500) } else { secs },
            },
            idle_conns: idle_requested.min(fd_room),
            idle_requested,
            aes_secs: Duration::from_millis(if s { 100 } else { 700 }),
            rounds: a.rounds.unwrap_or(if s { 1 } else { 3 }).max(1),
        }
    }
}

/// Runs `f` under `limit`, logging; a failure is recorded and yields `None`.
pub async fn step<T>(
    errors: &mut Vec<String>,
    what: &str,
    limit: Duration,
    f: impl Future<Output = anyhow::Result<T>>,
) -> Option<T> {
    eprintln!("[bench] {what} ...");
    match tokio::time::timeout(limit, f).await {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            eprintln!("[bench] {what}: FAILED: {e:#}");
            errors.push(format!("{what}: {e:#}"));
            None
        }
        Err(_) => {
            eprintln!("[bench] {what}: timed out after {limit:?}");
            errors.push(format!("{what}: timed out after {limit:?}"));
            None
        }
    }
}

/// What the run needs to start processes.
struct Env {
    dir: tempfile::TempDir,
    mtgate: PathBuf,
    key: Key16,
    dc: SocketAddr,
    mask: Option<SocketAddr>,
    /// mtgate serves its own site (`--site`).
    site: bool,
    /// ... and the WEB proxy type on it (`--webproxy`).
    webproxy: bool,
    /// `[shared] redis` (`--shared-redis`).
    shared_redis: Option<String>,
}

impl Env {
    fn start_mtgate(&self, name: &str, workers: usize) -> anyhow::Result<Proxy> {
        self.start_mtgate_with(name, workers, "")
    }

    /// [`Env::start_mtgate`] with extra `[tls]` lines.
    fn start_mtgate_with(
        &self,
        name: &str,
        workers: usize,
        tls_extra: &str,
    ) -> anyhow::Result<Proxy> {
        self.start_mtgate_full(name, workers, tls_extra, "websocket")
    }

    /// [`Env::start_mtgate_with`] serving the WEB proxy type over `carrier`
    /// (with `--webproxy`).
    fn start_mtgate_full(
        &self,
        name: &str,
        workers: usize,
        tls_extra: &str,
        carrier: &str,
    ) -> anyhow::Result<Proxy> {
        self.spawn_mtgate(name, workers, tls_extra, carrier, &self.dc.to_string(), "")
    }

    /// Starts an mtgate whose DC 2 is `dc`, with `extra` tables appended.
    fn spawn_mtgate(
        &self,
        name: &str,
        workers: usize,
        tls_extra: &str,
        carrier: &str,
        dc: &str,
        extra: &str,
    ) -> anyhow::Result<Proxy> {
        let d = self.dir.path();
        let tls = match self.mask {
            Some(m) => format!("mask_host = \"{m}\""),
            None => "fronting = false".into(),
        };
        let site = match (self.site, self.webproxy) {
            (true, false) => format!("\n[site]\nhosts = [\"{DOMAIN}\"]\n"),
            (true, true) => format!(
                "\n[site]\nhosts = [\"{DOMAIN}\"]\n[site.webproxy]\nenabled = true\nmax_streams = 4096\ncarrier = \"{carrier}\"\n"
            ),
            (false, _) => String::new(),
        };
        let shared = match &self.shared_redis {
            Some(url) => format!("\n[shared]\nredis = \"{url}\"\nnode = \"bench-{name}\"\n"),
            None => String::new(),
        };
        let cfg = format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\npublic_host = \"127.0.0.1\"\nstate_dir = \"{state}\"\nworkers = {workers}\n\n\
             [tls]\ndomains = [\"{DOMAIN}\"]\n{tls}\n{tls_extra}\n{site}\n\
             [users.bench]\nsecret = \"{secret}\"\nmodes = [\"classic\", \"dd\", \"ee\"]\n\n\
             [dcs]\n2 = [\"{dc}\"]\n\n[log]\nlevel = \"warn\"\n\n\
             # All load comes from 127.0.0.1: the policy runs (its cost is measured)\n\
             # with per-source limits no single address of a real deployment needs.\n\
             [policy.rate]\nnew_connections_per_second = 1000000.0\nburst = 1000000\nmax_connections_per_ip = 1000000\n{shared}\n{extra}",
            state = d.join(format!("state-{name}")).display(),
            secret = hex::encode(self.key.expose()),
        );
        let path = d.join(format!("{name}.toml"));
        std::fs::write(&path, cfg)?;
        let mut cmd = Command::new(&self.mtgate);
        cmd.arg("run").arg("--config").arg(&path).arg("--no-qr");
        let p = Proxy::spawn(
            cmd,
            &format!("mtgate ({name})"),
            &d.join(format!("{name}.log")),
            START_WAIT,
        )?;
        eprintln!(
            "[bench] mtgate ({name}, {workers} workers) pid {} on {}",
            p.pid, p.addr
        );
        Ok(p)
    }

    fn start_relay(&self, workers: usize) -> anyhow::Result<Proxy> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--upstream"])
            .arg(self.dc.to_string())
            .arg("--workers")
            .arg(workers.to_string());
        let p = Proxy::spawn(cmd, "relay", &self.dir.path().join("relay.log"), START_WAIT)?;
        eprintln!(
            "[bench] relay ({workers} workers) pid {} on {}",
            p.pid, p.addr
        );
        Ok(p)
    }

    fn target(&self, label: &str, addr: SocketAddr, mode: Mode, dc: i16) -> Target {
        Target {
            label: label.into(),
            addr,
            mode,
            key: self.key.clone(),
            domain: DOMAIN.into(),
            dc,
        }
    }
}

fn find_mtgate(a: &Args) -> anyhow::Result<PathBuf> {
    let p = match &a.mtgate {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(|d| d.join("mtgate"))
            .context("no directory for this binary")?,
    };
    if !p.is_file() {
        bail!(
            "mtgate binary not found at {} (build it with `cargo build --release -p mtgate` or pass --mtgate)",
            p.display()
        );
    }
    Ok(p)
}

fn check_alive(p: &mut Proxy, errors: &mut Vec<String>) -> bool {
    if p.alive() {
        return true;
    }
    let msg = format!(
        "{} exited during the run; its stderr:\n{}",
        p.name,
        p.log_tail()
    );
    eprintln!("[bench] {msg}");
    errors.push(msg);
    false
}

/// Runs everything `a` asks for and returns the report (targets evaluated).
pub async fn run(a: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let load0 = procs::loadavg();
    let only = |part: &str| a.only.as_ref().is_none_or(|o| o.iter().any(|x| x == part));
    let nofile = procs::raise_nofile(65_536);
    let plan = Plan::new(a, nofile);
    let hold = Duration::from_secs_f64(a.idle_hold.max(0.0));
    let mut errors = Vec::new();

    let aes = only("aes").then(|| load::aes_speed(plan.aes_secs));
    if let Some(g) = aes {
        eprintln!("[bench] AES-256-CTR: {g:.2} GB/s");
    }

    let dc_addr = dc::start_echo_dc(a.dc_listen)
        .await
        .context("starting the echo DC")?;
    eprintln!("[bench] echo DC on {dc_addr}");
    let mask = if a.no_fronting || a.target.is_some() {
        None
    } else {
        Some(dc::start_mask_sink().await?)
    };
    let env = Env {
        dir: tempfile::Builder::new().prefix("mtgate-bench-").tempdir()?,
        mtgate: match a.target {
            Some(_) => PathBuf::new(),
            None => find_mtgate(a)?,
        },
        key: Key16::generate(),
        dc: dc_addr,
        mask,
        site: a.site || a.webproxy,
        webproxy: a.webproxy,
        shared_redis: a.shared_redis.clone(),
    };
    let mut report = Report {
        machine: Machine::detect(),
        settings: Settings {
            smoke: a.smoke,
            external_target: a.target.clone(),
            proxy_workers: a.workers,
            loadgen_threads: a.loadgen_threads.max(1),
            fronting: mask.is_some(),
            site: a.site,
            bulk_secs: plan.bulk.duration.as_secs_f64(),
            bulk_max_bytes: plan.bulk.max_bytes,
            handshake_concurrency: a.handshake_concurrency,
            latency_conns: plan.latency.conns,
            latency_rate_per_conn: plan.latency.rate,
            latency_msg_len: plan.latency.msg_len,
            idle_conns: plan.idle_conns,
            idle_conns_requested: plan.idle_requested,
            rounds: plan.rounds,
            nofile_limit: nofile,
            loadavg_at_start: load0,
        },
        aes_ctr_gb_per_s: aes,
        bulk: Vec::new(),
        handshakes: Vec::new(),
        latency: Vec::new(),
        idle: None,
        leak: None,
        scaling: None,
        targets: Vec::new(),
        errors: Vec::new(),
        total_secs: 0.0,
    };

    // The subject under test, and (self mode) the process behind it.
    let subject_label;
    let mut subjects: Vec<Target> = Vec::new();
    // WEB proxy carriers bridged to local ports, alive for the whole run;
    // the mtgate of each carrier but the first, and its subject.
    let mut bridges = Vec::new();
    let mut carrier_proxies: Vec<Proxy> = Vec::new();
    let mut extra: Vec<(Target, Option<u32>)> = Vec::new();
    let mut subject_pid = None;
    let mut main_proxy = None;
    match (&a.target, &a.secret) {
        (Some(addr), Some(secret)) => {
            let addr = addr
                .to_socket_addrs()
                .with_context(|| format!("--target {addr}"))?
                .next()
                .context("--target resolves to nothing")?;
            let s = ProxySecret::parse(secret).map_err(|e| anyhow::anyhow!("--secret: {e:?}"))?;
            let (mode, domain) = match &s.kind {
                SecretKind::Plain => (Mode::Classic, DOMAIN.to_owned()),
                SecretKind::Dd => (Mode::Dd, DOMAIN.to_owned()),
                SecretKind::Ee(d) => (Mode::Ee, d.clone()),
            };
            subject_label = format!("target {}", mode.name());
            subjects.push(Target {
                label: subject_label.clone(),
                addr,
                mode,
                key: s.key.clone(),
                domain,
                dc: a.dc,
            });
            subject_pid = a.target_pid;
            eprintln!(
                "[bench] target {addr} ({}); its DC {} must point at {dc_addr}",
                mode.name(),
                a.dc
            );
            if let (true, Some(pid)) = (only("idle"), a.target_pid) {
                let t = subjects[0].clone();
                report.idle = step(
                    &mut errors,
                    "idle connections",
                    Duration::from_secs(180) + hold,
                    load::idle(&t, pid, plan.idle_conns, 16, hold),
                )
                .await;
            }
        }
        _ => {
            subject_label = "mtgate ee".to_owned();
            if only("idle") {
                let what = format!(
                    "idle: {} authenticated ee connections on a fresh mtgate",
                    plan.idle_conns
                );
                report.idle = step(&mut errors, &what, Duration::from_secs(180) + hold, async {
                    let p = env.start_mtgate("idle", a.workers)?;
                    let t = env.target("mtgate ee", p.addr, Mode::Ee, a.dc);
                    load::idle(&t, p.pid, plan.idle_conns, 16, hold).await
                })
                .await;
            }
            if only("leak") {
                // Each worker thread's allocator arena must be warm before the
                // baseline is read, so the warm-up grows with the workers.
                let (warm, cycles) = if a.smoke {
                    (200, 2_000)
                } else {
                    (2_000 * a.workers.clamp(1, 16) as u64, 100_000)
                };
                report.leak = step(
                    &mut errors,
                    &format!("leak check: {cycles} connections opened and closed"),
                    Duration::from_secs(240),
                    async {
                        // The replay cache is bounded but its pages are touched as it
                        // fills (34 B per handshake); a small one is full after the
                        // warm-up, so what remains is per-connection memory.
                        let p =
                            env.start_mtgate_with("leak", a.workers, "replay_cache_size = 1024")?;
                        let t = env.target("mtgate ee", p.addr, Mode::Ee, a.dc);
                        load::handshakes(&t, None, 16, Duration::from_secs(60), warm).await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let rss_before = procs::rss_bytes(p.pid)?;
                        let r = load::handshakes(&t, None, 16, Duration::from_secs(200), cycles)
                            .await?;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let rss_after = procs::rss_bytes(p.pid)?;
                        eprintln!(
                            "[bench]   {} cycles: RSS {:.1} → {:.1} MiB",
                            r.completed,
                            rss_before as f64 / 1048576.0,
                            rss_after as f64 / 1048576.0
                        );
                        anyhow::Ok(crate::report::LeakResult {
                            target: t.label.clone(),
                            cycles: r.completed,
                            warmup_cycles: warm,
                            secs: r.secs,
                            rss_before,
                            rss_after,
                        })
                    },
                )
                .await;
            }
            if only("bulk") || only("latency") || only("handshake") {
                match env.start_mtgate("main", a.workers) {
                    Ok(p) => {
                        for (label, mode) in [
                            ("mtgate classic", Mode::Classic),
                            ("mtgate dd", Mode::Dd),
                            ("mtgate ee", Mode::Ee),
                        ] {
                            subjects.push(env.target(label, p.addr, mode, a.dc));
                        }
                        if a.webproxy {
                            let site = webproxy_site(&env, "main");
                            match async {
                                webproxy_bridge(
                                    &env,
                                    &site?,
                                    p.addr,
                                    mtgate_testkit::webproxy::Carrier::WebSocket,
                                )
                                .await
                            }
                            .await
                            {
                                Ok(b) => {
                                    subjects.push(env.target(
                                        "mtgate webproxy-ws dd",
                                        b.addr,
                                        Mode::Dd,
                                        a.dc,
                                    ));
                                    bridges.push(b);
                                }
                                Err(e) => errors.push(format!("WEB proxy carrier: {e:#}")),
                            }
                        }
                        subject_pid = Some(p.pid);
                        main_proxy = Some(p);
                        // The other carriers: an mtgate each (the carrier is
                        // a setting of the site), measured with its own pid.
                        if a.webproxy {
                            use mtgate_testkit::webproxy::Carrier;
                            for (c, label) in [
                                (Carrier::WebSocketLanes, "mtgate webproxy-wsl dd"),
                                (Carrier::Https, "mtgate webproxy-https dd"),
                                (Carrier::HttpsLanes, "mtgate webproxy-h2l dd"),
                            ] {
                                let name = format!("wp-{}", c.name());
                                let started = env
                                    .start_mtgate_full(&name, a.workers, "", c.name())
                                    .and_then(|p| Ok((p, webproxy_site(&env, &name)?)));
                                let (p, site) = match started {
                                    Ok(x) => x,
                                    Err(e) => {
                                        errors.push(format!("starting mtgate ({name}): {e:#}"));
                                        continue;
                                    }
                                };
                                match webproxy_bridge(&env, &site, p.addr, c).await {
                                    Ok(b) => {
                                        extra.push((
                                            env.target(label, b.addr, Mode::Dd, a.dc),
                                            Some(p.pid),
                                        ));
                                        bridges.push(b);
                                        carrier_proxies.push(p);
                                    }
                                    Err(e) => errors.push(format!("WEB proxy {}: {e:#}", c.name())),
                                }
                            }
                        }
                    }
                    Err(e) => errors.push(format!("starting mtgate: {e:#}")),
                }
            }
        }
    }

    // The link's pairs, one per cipher (`--link`), alive for the run.
    let mut link_procs: Vec<Proxy> = Vec::new();
    if a.link && a.target.is_none() {
        for c in mtgate_proto::link::negotiate::Cipher::ALL {
            match env.start_link_pair(c, a.workers) {
                Ok((exit, bridge)) => {
                    let label = format!("mtgate link {} dd", c.name());
                    extra.push((
                        env.target(&label, bridge.addr, Mode::Dd, a.dc),
                        Some(bridge.pid),
                    ));
                    link_procs.push(exit);
                    link_procs.push(bridge);
                }
                Err(e) => errors.push(format!("starting the link pair ({}): {e:#}", c.name())),
            }
        }
    }

    let mut relay = None;
    if only("bulk") || only("latency") || only("handshake") {
        match env.start_relay(a.workers) {
            Ok(p) => relay = Some(p),
            Err(e) => errors.push(format!("starting the relay: {e:#}")),
        }
    }
    // (target, pid) pairs, relay first.
    let mut all: Vec<(Target, Option<u32>)> = Vec::new();
    if let Some(r) = &relay {
        all.push((env.target("relay", r.addr, Mode::Relay, a.dc), Some(r.pid)));
    }
    all.extend(subjects.iter().map(|t| (t.clone(), subject_pid)));
    all.extend(extra);

    let m = matrix::Matrix {
        targets: &all,
        conns: &a.conns,
        bulk: only("bulk").then_some(plan.bulk),
        latency: only("latency").then_some(plan.latency),
        handshakes: only("handshake").then_some(matrix::HandshakeOpts {
            concurrency: a.handshake_concurrency,
            secs: plan.hs_secs,
            max: plan.hs_max,
        }),
        all_modes_handshake: a.target.is_some(),
        rounds: plan.rounds,
    };
    let (bulk, latency, handshakes) = m.run(&mut errors).await;
    (report.bulk, report.latency, report.handshakes) = (bulk, latency, handshakes);
    for p in [main_proxy.as_mut(), relay.as_mut()].into_iter().flatten() {
        check_alive(p, &mut errors);
    }
    for p in carrier_proxies.iter_mut().chain(link_procs.iter_mut()) {
        check_alive(p, &mut errors);
    }
    drop(relay);
    drop(bridges);
    drop(carrier_proxies);
    drop(link_procs);

    if a.target.is_none() && only("scaling") && a.workers != 1 {
        report.scaling = Some(scaling(&env, a, &plan, main_proxy.take(), &mut errors).await);
    }
    drop(main_proxy);

    report.errors = errors;
    report.evaluate(&subject_label);
    report.total_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// mtgate's own site as the instance `name` serves it (its self-signed
/// certificate trusted).
fn webproxy_site(env: &Env, name: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(env
        .dir
        .path()
        .join(format!("state-{name}"))
        .join("site-selfsigned.pem"))
}

/// A session of `carrier` on mtgate's own site at `addr` (certificate
/// `pem`), bridged to a local port whose connections are streams: `dd`
/// clients of the bench run over it.
async fn webproxy_bridge(
    env: &Env,
    pem: &std::path::Path,
    addr: SocketAddr,
    carrier: mtgate_testkit::webproxy::Carrier,
) -> anyhow::Result<mtgate_testkit::webproxy::Bridge> {
    use rustls::pki_types::pem::PemObject;
    let cert = rustls::pki_types::CertificateDer::from_pem_file(pem)
        .with_context(|| format!("{}", pem.display()))?;
    let site = mtgate_testkit::webproxy::Site::new(addr, DOMAIN, &cert)?;
    let mut dd = vec![0xdd];
    dd.extend_from_slice(env.key.expose());
    let cap = mtgate_proto::webproxy::capability(&dd, DOMAIN, None);
    let (_, boot) = site.bootstrap(&cap).await?;
    let (_, token, _) = site.session(&boot).await?;
    mtgate_testkit::webproxy::bridge(site, token, carrier, Default::default()).await
}

/// ee bulk (16 connections) and handshakes on mtgate with `a.workers` and with 1 worker.
async fn scaling(
    env: &Env,
    a: &Args,
    plan: &Plan,
    main: Option<Proxy>,
    errors: &mut Vec<String>,
) -> Scaling {
    let mut sc = Scaling {
        bulk_1: None,
        bulk_2: None,
        handshakes_1: None,
        handshakes_2: None,
        workers: a.workers,
    };
    let mut main = match main {
        Some(p) => Some(p),
        None => env
            .start_mtgate("main", a.workers)
            .map_err(|e| errors.push(format!("{e:#}")))
            .ok(),
    };
    let o = BulkOpts {
        conns: a.scaling_conns.max(1),
        ..plan.bulk
    };
    let limit = o.warmup + o.duration + Duration::from_secs(60);
    let hs_limit = plan.hs_secs + Duration::from_secs(60);
    for workers in [a.workers, 1] {
        // The N-worker mtgate is stopped before the 1-worker one starts.
        let proxy = if workers == 1 {
            drop(main.take());
            env.start_mtgate("w1", 1)
                .map_err(|e| errors.push(format!("{e:#}")))
                .ok()
        } else {
            main.take()
        };
        let Some(p) = proxy else {
            continue;
        };
        let t = env.target(&format!("mtgate ee w{workers}"), p.addr, Mode::Ee, a.dc);
        let b = step(
            errors,
            &format!("scaling: bulk {} × {}", t.label, o.conns),
            limit,
            load::bulk(&t, Some(p.pid), o),
        )
        .await;
        let h = step(
            errors,
            &format!("scaling: handshakes {}", t.label),
            hs_limit,
            load::handshakes(
                &t,
                Some(p.pid),
                a.handshake_concurrency,
                plan.hs_secs,
                plan.hs_max,
            ),
        )
        .await;
        if let (Some(b), Some(h)) = (&b, &h) {
            eprintln!(
                "[bench]   {:.1} MB/s, {:.0} handshakes/s",
                b.mb_per_s, h.per_s
            );
        }
        if workers == 1 {
            (sc.bulk_1, sc.handshakes_1) = (b, h);
        } else {
            (sc.bulk_2, sc.handshakes_2) = (b, h);
        }
    }
    sc
}
