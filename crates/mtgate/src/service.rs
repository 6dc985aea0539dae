//! The process's life as `mtgate run` leads it: the fd limit, logs, the
//! listeners (bound, handed over by a previous process, or passed by
//! systemd), the admin listener, the runtime and its background work
//! (policy state, the mask profile, memory trim, the watchdog), the first
//! screen, then signals, reload, takeover and drain. The command line
//! (`crate::cli`) parses arguments and calls [`run`].

use crate::admin::slot::AdminSlot;
use crate::admin::{AdminState, Metrics, MetricsSink};
use crate::config::{Config, Overrides, User};
use crate::events::{Counters, LogSink, Telemetry};
#[cfg(unix)]
use crate::handover;
use crate::reload::Reloader;
use crate::runtime::{Live, Runtime};
use crate::server::Server;
use crate::{links, state};
use anyhow::Context;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// What `mtgate run` starts with.
pub struct Start {
    /// The loaded configuration (file and flags).
    pub cfg: Config,
    /// The file it came from and the flags, for reloads.
    pub config_path: Option<PathBuf>,
    pub overrides: Overrides,
    /// Take the listeners over from a running process.
    pub takeover: bool,
    /// Do not draw QR codes.
    pub no_qr: bool,
    /// Also write the first user's QR code to this PNG file.
    pub qr_png: Option<PathBuf>,
}

/// The users to serve: the configured ones, or the generated default user.
pub(crate) fn users_for(cfg: &Config) -> anyhow::Result<(Vec<User>, bool)> {
    Ok(state::users_for(cfg)?)
}

fn init_logs(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MTGATE_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    // Colour only on a terminal: a log file or journal gets plain text.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if cfg.log_json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

/// Runs the proxy until a signal or a takeover ends it.
pub fn run(a: Start) -> anyhow::Result<()> {
    let mut cfg = a.cfg;
    // The descriptors this process may hold, and the connections they carry.
    let nofile = crate::fdlimit::raise();
    let configured_max = cfg.max_connections;
    cfg.max_connections = crate::fdlimit::effective(cfg.max_connections, nofile);
    init_logs(&cfg);
    // Before any thread exists: this reads and clears LISTEN_FDS/LISTEN_PID.
    #[cfg(unix)]
    let activated = handover::systemd_listeners().context("systemd socket activation")?;
    #[cfg(unix)]
    if !activated.is_empty() {
        tracing::info!(count = activated.len(), "listening sockets from systemd");
    }
    crate::control::rules::merge(&mut cfg).context("the rules of the admin API")?;
    let (users, created) = users_for(&cfg).inspect_err(|e| {
        // An HSM that cannot be reached at start is a security event too.
        let msg = format!("{e:#}");
        if msg.contains("hsm:") {
            if let Ok(a) = crate::control::audit::Audit::open(Some(&cfg.state_dir)) {
                let _ = a.append(&crate::control::audit::Record {
                    action: "hsm.error".into(),
                    target: cfg.hsm.as_ref().map(|h| h.token.clone()),
                    result: format!("refused: the start: {msg}"),
                    ..Default::default()
                });
            }
        }
    })?;
    if created {
        eprintln!(
            "generated a new secret in {}",
            cfg.state_dir.join("secret").display()
        );
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cfg.workers > 0 {
        builder.worker_threads(cfg.workers);
    }
    let rt = builder.enable_all().build()?;
    let res = rt.block_on(async move {
        let metrics =
            Arc::new(Metrics::new(users.iter().map(|u| u.name.as_str())).with_dc_table(&cfg.dcs));
        let admin_state = AdminState::new(metrics.clone());
        if let Some((cert, key)) = &cfg.admin_tls {
            admin_state.set_tls(crate::admin::tls::acceptor(cert, key)?);
        }
        let logs = Arc::new(LogSink::default());
        {
            // The refusal summary of a quiet moment still gets written.
            let logs = logs.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(crate::logsum::INTERVAL).await;
                    logs.flush(std::time::Duration::ZERO);
                }
            });
        }
        // The control plane: the admin API's tokens (admin.token among
        // them, as a superuser) and the audit trail, which hears the
        // session path's security events as one more subscriber.
        let control_plane = match crate::control::Control::open_with(
            Some(cfg.state_dir.clone()),
            cfg.admin_token.as_ref().map(|t| t.expose()),
            cfg.admin_auth_failures,
        ) {
            Ok(c) => Some(Arc::new(c)),
            Err(e) => {
                tracing::error!(error = %e, "the admin API and the audit trail are off: their state cannot be read");
                None
            }
        };
        let mut sinks: Vec<Arc<dyn crate::events::EventSink>> = vec![
            logs.clone(),
            Arc::new(Counters::default()),
            Arc::new(MetricsSink(metrics.clone())),
        ];
        if let Some(c) = &control_plane {
            sinks.push(Arc::new(crate::control::security::AuditSink(c.clone())));
        }
        let telemetry = Telemetry::new(sinks);
        let runtime = Arc::new(Runtime::build(cfg.clone(), users.clone(), telemetry)?);
        let mut signals = Signals::new();
        metrics.set_policy(runtime.policy.clone());
        metrics.set_mask_budget(runtime.mask_budget.clone());
        if let Some(site) = &runtime.site {
            metrics.set_site(site.clone());
        }
        if let Some(shared) = &runtime.shared {
            metrics.set_shared(shared.clone());
        }
        metrics.set_link(&cfg.link, &runtime.link_stats);
        metrics.set_limits(cfg.max_connections, nofile.map(|l| l.soft));
        if cfg.max_connections < configured_max {
            tracing::warn!(
                cap = cfg.max_connections,
                configured = configured_max,
                fd_soft = nofile.map(|l| l.soft),
                "the fd limit lowers the connection cap; raise LimitNOFILE / ulimit -n"
            );
        }
        let mut persisting = spawn_policy_tasks(&runtime.policy, &cfg);

        #[cfg(unix)]
        let mut takeover = match (a.takeover, &cfg.handover_socket) {
            (false, _) => None,
            (true, None) => anyhow::bail!("--takeover needs server.handover_socket"),
            (true, Some(path)) => {
                let t = handover::request(path)
                    .await
                    .context("taking the listeners over")?;
                if t.is_none() {
                    tracing::warn!(path = %path.display(), "--takeover: no running mtgate answered; starting fresh");
                }
                t
            }
        };
        // The admin listener the old process handed over, if any; else bind
        // (retrying while the old process still holds the address).
        #[cfg(unix)]
        let handed_admin = takeover
            .as_mut()
            .and_then(|t| t.admin.take())
            .map(|i| (i.configured, i.listener));
        #[cfg(not(unix))]
        let handed_admin = None;
        // A handed-over admin socket is served once this process is ready
        // (the old one answers on it until then); otherwise start at once, so
        // startup probes see this process start.
        let mut admin = match handed_admin {
            Some(_) => AdminSlot::empty(cfg.admin_listen),
            None => AdminSlot::start(cfg.admin_listen, None, admin_state.clone()).await,
        };
        #[cfg(unix)]
        let listeners = {
            let handed = takeover
                .as_mut()
                .map(|t| std::mem::take(&mut t.listeners))
                .unwrap_or_default();
            assemble_listeners(&cfg.listen, activated, handed)?
        };
        #[cfg(not(unix))]
        let listeners = cfg
            .listen
            .iter()
            .map(|a| Ok((*a, crate::server::bind_configured(*a)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let live = Live::new(runtime.clone());
        let mut server = Server::start_labeled(live.clone(), listeners)?;
        #[cfg(unix)]
        let handed_ws = takeover
            .as_mut()
            .map(|t| std::mem::take(&mut t.websocket))
            .unwrap_or_default()
            .into_iter()
            .map(|i| (i.configured, i.listener))
            .collect();
        #[cfg(not(unix))]
        let handed_ws = Vec::new();
        server.start_websocket(&live, handed_ws)?;
        server.start_link(&live)?;
        let reloader = Reloader::new(
            a.config_path.clone(),
            a.overrides.clone(),
            live.clone(),
            Some(metrics.clone()),
        );
        if let Some(c) = &control_plane {
            c.set_apply(reloader.clone());
            admin_state.set_control(c.clone());
            tokio::spawn(crate::control::security::pump_expiries(
                c.clone(),
                cfg.state_dir.clone(),
            ));
            tokio::spawn(crate::control::security::pump_blocks(
                c.clone(),
                runtime.policy.clone(),
            ));
            if let Some(h) = &cfg.hsm {
                tokio::spawn(crate::control::security::pump_hsm(
                    c.clone(),
                    h.token.clone(),
                ));
            }
            if let Some(shared) = &runtime.shared {
                share_edits(c, shared);
            }
        }
        admin_state.set_reload(cfg.admin_token.clone(), {
            let r = reloader.clone();
            Arc::new(move || r.reload().map(|s| s.to_string()).map_err(|e| e.to_string()))
        });
        if cfg.watch_config {
            reloader.clone().spawn_watcher(Duration::from_secs(2));
        }
        #[cfg(unix)]
        if let Some(t) = takeover {
            let done = t.complete().await;
            // The old process wrote its last state before confirming: take it in.
            runtime.policy.reload_state();
            match done {
                Ok(true) => tracing::info!("took the listeners over; the old process drains"),
                Ok(false) => tracing::warn!("took the listeners over; the old process did not confirm"),
                Err(e) => tracing::warn!(error = %e, "took the listeners over; the old process did not confirm"),
            }
        }
        #[cfg(unix)]
        let (taken_tx, mut taken_rx) = tokio::sync::mpsc::channel(1);
        #[cfg(unix)]
        let control = cfg.handover_socket.as_ref().and_then(|path| {
            let source = server.listener_source();
            let admin_fd = admin.offer_source();
            let offer = move || {
                let mut out: Vec<handover::Offer> = source
                    .fds()?
                    .into_iter()
                    .map(|(configured, fd)| handover::Offer { configured, fd, admin: false, websocket: false })
                    .collect();
                for (configured, fd) in source.ws_fds()? {
                    out.push(handover::Offer { configured, fd, admin: false, websocket: true });
                }
                if let Some(a) = admin_fd.offer() {
                    let (configured, fd) = a?;
                    out.push(handover::Offer { configured, fd, admin: true, websocket: false });
                }
                Ok(out)
            };
            match handover::ControlSocket::start(path, offer, taken_tx) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "no handover socket: this process cannot hand its listeners to a new one");
                    None
                }
            }
        });
        admin_state.health.mark_started_and_notify();
        if handed_admin.is_some() {
            admin.fill(handed_admin, admin_state.clone()).await;
        }
        #[cfg(unix)]
        if let Some(period) = crate::admin::notify::watchdog_period() {
            spawn_watchdog(period, server.accept_probe());
        }
        // Memory back to the system after load (see crate::memtrim).
        crate::memtrim::spawn(server.active_counter());
        if cfg.fronting && cfg.learn_profile {
            crate::runtime::spawn_profiler(live.clone(), cfg.profile_interval);
        }
        let mut out = std::io::stdout().lock();
        let facts = crate::banner::Facts {
            clients: &server.local_addrs,
            admin: admin.local_addr(),
            websocket: &server.ws_addrs,
            secret_created: created,
            limits: limits_line(cfg.max_connections, configured_max, nofile),
            site_cert: runtime.site.as_ref().and_then(|s| {
                let c = s.certs().current();
                c.iter().map(|l| (l.not_after, l.self_signed)).min()
            }),
        };
        out.write_all(crate::banner::render(&cfg, &facts).as_bytes())?;
        let port = links::public_port(&cfg, server.local_addrs.first().map(|a| a.port()));
        if let Some(c) = &control_plane {
            c.set_view(Arc::new(crate::runtime_view::RuntimeView {
                live: live.clone(),
                port,
            }));
        }
        // For `mtgate link` run without this start's flags.
        let running = crate::running::Running {
            pid: std::process::id(),
            port,
            public_host: links::public_host(&cfg),
        };
        if let Err(e) = crate::running::record(&cfg.state_dir, &running) {
            tracing::debug!(error = %e, "cannot record the running instance in the state directory");
        }
        links::print_all(&mut out, &cfg, &users, port, !a.no_qr)?;
        out.flush()?;
        drop(out);
        if let Some(png) = &a.qr_png {
            write_png(&cfg, &users[0], port, png)?;
        }

        // Run until a signal, or until a new process has taken the listeners.
        #[cfg(unix)]
        let taken = tokio::select! {
            _ = signals.next(Some(&reloader)) => None,
            Some(t) = taken_rx.recv() => Some(t),
        };
        #[cfg(not(unix))]
        signals.next(Some(&reloader)).await;
        #[cfg(not(unix))]
        admin_state.health.mark_draining();
        #[cfg(unix)]
        match &taken {
            // The service goes on in the new process: hand systemd the main
            // pid instead of announcing a stop.
            Some(t) => {
                tracing::info!(new_pid = t.pid, "listeners taken over; draining");
                // The new process answers health and metrics on the same
                // socket from now on. This one stops accepting there and never
                // turns "draining": the service goes on, and a probe on a
                // kept-alive admin connection to us must not see a 503.
                admin.close();
                crate::admin::notify::notify(&format!("MAINPID={}", t.pid));
            }
            None => {
                admin_state.health.mark_draining();
                tracing::info!("shutting down: no new connections; draining");
                crate::admin::notify::notify("STOPPING=1");
            }
        }
        server.stop_accepting().await;
        #[cfg(unix)]
        {
            let handed_over = taken.is_some();
            if let Some(t) = taken {
                // Write the policy state (usage, blocks) before confirming, so
                // the new process reads it; it persists from now on.
                persisting.finish().await;
                let _ = t.done.send(());
            }
            if let Some(c) = control {
                // After a handover the path belongs to the new process.
                c.close(!handed_over);
            }
        }
        let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
        tokio::select! {
            cut = server.drain(deadline) => {
                if cut > 0 {
                    tracing::warn!(sessions = cut, "drain deadline passed; remaining sessions ended");
                }
                tracing::info!("drained; exiting");
            }
            _ = signals.next(None) => {
                tracing::warn!(sessions = server.active(), "second signal: exiting now");
            }
        }
        persisting.finish().await;
        logs.flush(std::time::Duration::ZERO);
        crate::running::clear(&cfg.state_dir, std::process::id());
        Ok(())
    });
    // Do not wait for anything still running (a second signal means now).
    rt.shutdown_background();
    res
}

/// Starts the policy's background work: the state writer (usage, blocks and
/// reputation to the state directory, at most every `policy.persist_interval`,
/// and once more when told to stop) and the re-reading of ACL list files and
/// the geo database when they change.
fn spawn_policy_tasks(policy: &Arc<crate::policy::engine::Policy>, cfg: &Config) -> StateWriter {
    use crate::policy::persist::Persister;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let p = policy.clone();
    let writer = Persister::new(policy.state_path(), cfg.policy.persist_interval)
        .assume_written(&policy.snapshot());
    let task = tokio::spawn(async move {
        let stats = writer.run(move || p.snapshot(), stop_rx).await;
        tracing::debug!(
            writes = stats.writes,
            failures = stats.failures,
            "policy state writer stopped"
        );
    });
    let p = policy.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(p.refresh_interval()).await;
            p.refresh_files();
        }
    });
    StateWriter {
        stop,
        task: Some(task),
    }
}

/// The running policy-state writer.
struct StateWriter {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl StateWriter {
    /// Tells the writer to write a last time and waits for it (at most 5 s); later calls do nothing.
    async fn finish(&mut self) {
        let _ = self.stop.send(true);
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

/// Matches the configured addresses to listeners handed over by the previous
/// process (by configured address, then local address) or passed by systemd
/// (by local address); binds the rest. Handed-over listeners no longer
/// configured are closed; systemd's are used as given.
#[cfg(unix)]
fn assemble_listeners(
    listen: &[std::net::SocketAddr],
    mut activated: Vec<handover::Inherited>,
    mut handed: Vec<handover::Inherited>,
) -> anyhow::Result<Vec<(std::net::SocketAddr, std::net::TcpListener)>> {
    fn take(
        pool: &mut Vec<handover::Inherited>,
        addr: std::net::SocketAddr,
        by_label: bool,
    ) -> Option<std::net::TcpListener> {
        let pos = by_label
            .then(|| pool.iter().position(|i| i.configured == addr))
            .flatten()
            .or_else(|| {
                pool.iter()
                    .position(|i| i.listener.local_addr().ok() == Some(addr))
            })?;
        Some(pool.remove(pos).listener)
    }
    let mut out = Vec::new();
    for &addr in listen {
        let l = match take(&mut handed, addr, true) {
            Some(l) => l,
            None => match take(&mut activated, addr, false) {
                Some(l) => l,
                None => crate::server::bind_configured(addr)?,
            },
        };
        out.push((addr, l));
    }
    for i in activated {
        tracing::info!(addr = %i.configured, "socket from systemd not in server.listen; serving it as given");
        out.push((i.configured, i.listener));
    }
    for i in handed {
        tracing::warn!(addr = %i.configured, "handed-over listener no longer in server.listen; closing it");
    }
    Ok(out)
}

/// Sends `WATCHDOG=1` every half period while the runtime schedules tasks
/// (this task runs, and a spawned probe task completes) and every accept
/// loop is alive (or was stopped on purpose, while draining).
#[cfg(unix)]
fn spawn_watchdog(period: Duration, probe: crate::server::AcceptProbe) {
    tracing::info!(?period, "systemd watchdog armed");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let scheduler = tokio::time::timeout(period / 4, tokio::spawn(async {}))
                .await
                .is_ok_and(|r| r.is_ok());
            if scheduler && probe.healthy() {
                crate::admin::notify::notify("WATCHDOG=1");
            } else {
                tracing::error!(
                    scheduler,
                    accept = probe.healthy(),
                    "watchdog: not pinging systemd"
                );
            }
        }
    });
}

/// The first screen's line on how many connections this process takes.
fn limits_line(
    effective: usize,
    configured: usize,
    nofile: Option<crate::fdlimit::NoFile>,
) -> String {
    let show = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    match nofile {
        Some(l) if effective < configured => format!(
            "CONNECTIONS at most {effective} at once: the fd limit ({} soft, {} hard) at {} descriptors a client; \
             server.max_connections = {configured} needs a limit of {} (LimitNOFILE= in the systemd unit, ulimit -n)",
            show(l.soft),
            show(l.hard),
            crate::fdlimit::FDS_PER_CLIENT,
            configured as u64 * crate::fdlimit::FDS_PER_CLIENT + crate::fdlimit::FDS_BASE
        ),
        Some(l) => format!(
            "CONNECTIONS at most {effective} at once (server.max_connections; fd limit {} soft, {} hard)",
            show(l.soft),
            show(l.hard)
        ),
        None => format!("CONNECTIONS at most {effective} at once (server.max_connections)"),
    }
}

/// The next delivery of `sig`, or never when it could not be installed.
#[cfg(unix)]
async fn next_signal(sig: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match sig {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

/// The stop signals (SIGTERM, SIGINT), installed once so a second one is seen
/// while draining.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                hup: signal(SignalKind::hangup()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Waits for SIGTERM or SIGINT; meanwhile SIGHUP (systemd `ExecReload`)
    /// reloads the config (`reloader`), or is ignored while draining (`None`).
    async fn next(&mut self, reloader: Option<&Reloader>) {
        #[cfg(unix)]
        loop {
            tokio::select! {
                Some(_) = next_signal(self.term.as_mut()) => return,
                _ = tokio::signal::ctrl_c() => return,
                Some(_) = next_signal(self.hup.as_mut()) => match reloader {
                    Some(r) => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        // The outcome is logged and counted by the reloader.
                        let _ = r.reload();
                    }
                    None => tracing::warn!("SIGHUP ignored: draining"),
                },
            }
        }
        #[cfg(not(unix))]
        {
            let _ = reloader;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Writes the best link of `user` as a QR code PNG.
pub(crate) fn write_png(
    cfg: &Config,
    user: &User,
    port: u16,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let host = links::public_host(cfg);
    let domain = cfg
        .domains
        .first()
        .map(String::as_str)
        .unwrap_or(crate::config::DEFAULT_DOMAIN);
    let best = user
        .client_secrets(domain)
        .into_iter()
        .next()
        .context("user has no modes")?;
    links::write_qr_png(&best.tme_link(&host, port), path)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("QR code written to {}", path.display());
    Ok(())
}

/// Admin edits shared with the other nodes: a change made here is
/// announced through the shared state; one announced elsewhere is taken.
fn share_edits(control: &Arc<crate::control::Control>, shared: &Arc<crate::shared::Shared>) {
    use crate::control::sync::{Announce, Managed};
    let s = shared.clone();
    control.set_announce(Announce(Arc::new(
        move |what: Managed, content: Vec<u8>| {
            // A quota reset made here clears the shared totals too.
            if what == Managed::Quota {
                if let Ok(r) = serde_json::from_slice::<crate::control::sync::QuotaReset>(&content)
                {
                    s.reset_usage(r.user, r.period_only);
                }
            }
            s.announce(what.name(), content)
        },
    )));
    let c = control.clone();
    let take = Arc::new(move |what: &str, from: &str, content: Vec<u8>| {
        if let Some(m) = Managed::parse(what) {
            if let Err(e) = c.take_remote(m, &content, from) {
                tracing::warn!(error = %e, node = %from, "an edit from another node was not taken");
            }
        }
    });
    tokio::spawn(shared.clone().follow(&Managed::ALL, take));
}
