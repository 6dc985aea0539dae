//! The command line: `run`, `check`, `link`, `secret`. `anyhow` lives here and
//! in `main` only; everything below returns typed errors.

use crate::admin::{AdminServer, AdminState, Metrics, MetricsSink};
use crate::config::{Config, Overrides, User};
use crate::events::{Counters, LogSink, Telemetry};
use crate::runtime::Runtime;
use crate::server::Server;
use crate::{links, state};
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use mtgate_crypto::Key16;
use mtgate_proto::secret::{ProxySecret, SecretKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "mtgate",
    version,
    about = "A fast, stealthy MTProto proxy for Telegram"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the proxy. With no config file and no flags it starts on a working
    /// default: FakeTLS (`ee`) on [::]:443, one generated secret kept in the
    /// state directory, links and a QR code printed at start.
    Run(RunArgs),
    /// Validate a config file with exactly the code `run` uses; exit non-zero on error.
    Check {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print a user's tg:// and t.me links and a QR code (optionally as PNG).
    Link(LinkArgs),
    /// Check a deployment: config, binds, each DC (TCP + obfuscated2 + resPQ),
    /// the mask host (TLS, certificate, DNS), clock, fd limit. Prints a report with
    /// a fix for each problem; exits 1 if any check fails.
    Doctor(DoctorArgs),
    /// Generate a new random secret and print it in every form.
    Secret {
        /// Also print the `ee` (FakeTLS) form for this domain.
        #[arg(long, default_value = crate::config::DEFAULT_DOMAIN)]
        domain: String,
    },
}

/// Essentials that may be given as flags (they override the file).
#[derive(Args, Debug, Default, Clone)]
struct CommonArgs {
    /// TOML configuration file (see docs/config.md).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. `[::]:443` (dual-stack) or `0.0.0.0:8443`. Repeatable.
    #[arg(long)]
    listen: Vec<String>,
    /// A user secret: `NAME=SECRET` or `SECRET` (32 hex digits, or a dd/ee form). Repeatable.
    #[arg(long)]
    secret: Vec<String>,
    /// Override a DC address: `N=IP:PORT` (e.g. `2=127.0.0.1:4430`). Repeatable.
    #[arg(long)]
    dc: Vec<String>,
    /// FakeTLS domain (SNI) clients must present. Repeatable; the first is used in links.
    #[arg(long)]
    domain: Vec<String>,
    /// Where connections that are not valid clients are forwarded (`host:port`).
    #[arg(long)]
    mask_host: Option<String>,
    /// Host name or IP put in links (default: detected).
    #[arg(long)]
    public_host: Option<String>,
    /// Directory for state (the generated secret).
    #[arg(long)]
    state_dir: Option<String>,
    /// Default client modes for users without `modes`: comma list of classic,dd,ee.
    #[arg(long, value_delimiter = ',')]
    modes: Option<Vec<String>>,
    /// Prefer IPv6 toward Telegram (falls back to IPv4).
    #[arg(long)]
    prefer_ipv6: bool,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
}

impl CommonArgs {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            secrets: self.secret.clone(),
            dcs: self.dc.clone(),
            domains: self.domain.clone(),
            mask_host: self.mask_host.clone(),
            public_host: self.public_host.clone(),
            state_dir: self.state_dir.clone(),
            modes: self.modes.clone(),
            prefer_ipv6: self.prefer_ipv6,
            workers: self.workers,
        }
    }

    fn load(&self) -> anyhow::Result<Config> {
        let ov = self.overrides();
        Ok(match &self.config {
            Some(p) => Config::load(p, &ov)?,
            None => Config::from_overrides(&ov)?,
        })
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Do not draw QR codes at start.
    #[arg(long)]
    no_qr: bool,
    /// Also write the first user's QR code to this PNG file.
    #[arg(long)]
    qr_png: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct LinkArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Only this user (default: all).
    #[arg(long)]
    user: Option<String>,
    /// Write the QR code of the user's best link to this PNG file.
    #[arg(long)]
    png: Option<PathBuf>,
    /// Do not draw the QR code in the terminal.
    #[arg(long)]
    no_qr: bool,
}

/// Entry point used by `main`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Check { file } => check(&file),
        Cmd::Link(a) => link(a),
        Cmd::Secret { domain } => secret(&domain),
        Cmd::Doctor(a) => return doctor(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The users to serve: the configured ones, or the generated default user.
fn users_for(cfg: &Config) -> anyhow::Result<(Vec<User>, bool)> {
    if !cfg.users.is_empty() {
        return Ok((cfg.users.clone(), false));
    }
    let (u, created) = state::load_or_create_default_user(&cfg.state_dir, cfg.default_modes)?;
    Ok((vec![u], created))
}

fn init_logs(cfg: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("MTGATE_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_level));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_json {
        let _ = b.json().try_init();
    } else {
        let _ = b.try_init();
    }
}

fn run(a: RunArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    init_logs(&cfg);
    let (users, created) = users_for(&cfg)?;
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
    rt.block_on(async move {
        let metrics =
            Arc::new(Metrics::new(users.iter().map(|u| u.name.as_str())).with_dc_table(&cfg.dcs));
        let admin_state = AdminState::new(metrics.clone());
        let _admin = start_admin(&cfg, admin_state.clone()).await;
        let telemetry = Telemetry::new(vec![
            Arc::new(LogSink),
            Arc::new(Counters::default()),
            Arc::new(MetricsSink(metrics)),
        ]);
        let runtime = Arc::new(Runtime::build(cfg.clone(), users.clone(), telemetry));
        let server = Server::start(runtime.clone()).await?;
        admin_state.health.mark_started_and_notify();
        if cfg.fronting && cfg.learn_profile {
            crate::runtime::spawn_profiler(runtime, cfg.profile_interval);
        }
        let mut out = std::io::stdout().lock();
        for addr in &server.local_addrs {
            writeln!(out, "LISTENING {addr}")?;
        }
        let port = links::public_port(&cfg, server.local_addrs.first().map(|a| a.port()));
        links::print_all(&mut out, &cfg, &users, port, !a.no_qr)?;
        out.flush()?;
        drop(out);
        if let Some(png) = &a.qr_png {
            write_png(&cfg, &users[0], port, png)?;
        }
        wait_for_signal().await;
        tracing::info!("shutting down");
        admin_state.health.mark_draining_and_notify();
        server.shutdown(Duration::from_secs(5)).await;
        Ok(())
    })
}

/// Starts the admin listener if configured. A bind failure is logged, not
/// fatal: the proxy keeps serving clients (health probes then fail visibly).
async fn start_admin(cfg: &Config, state: Arc<AdminState>) -> Option<AdminServer> {
    let addr = cfg.admin_listen?;
    match AdminServer::start(addr, state).await {
        Ok(a) => {
            tracing::info!(addr = %a.local_addr, "admin listener (metrics, health) started");
            Some(a)
        }
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot start the admin listener; continuing without it");
            None
        }
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            // SIGHUP (systemd ExecReload) must not kill the process; reload is not
            // implemented yet, so it is only logged.
            let mut hup = signal(SignalKind::hangup()).ok();
            loop {
                tokio::select! {
                    _ = term.recv() => return,
                    _ = tokio::signal::ctrl_c() => return,
                    Some(_) = next_signal(hup.as_mut()) => {
                        tracing::warn!("SIGHUP: config reload is not implemented yet; restart to apply changes");
                    }
                }
            }
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

fn check(file: &std::path::Path) -> anyhow::Result<()> {
    let cfg = Config::load(file, &Overrides::default())?;
    let users = if cfg.users.is_empty() {
        1
    } else {
        cfg.users.len()
    };
    if cfg.me.enabled {
        match crate::me::files::load(&cfg.me, &cfg.state_dir, false) {
            // Fetched files may simply not have been fetched yet.
            Err(e) if cfg.me.fetch.is_some() => {
                eprintln!("me: {e} (to be fetched over HTTPS at start)")
            }
            r => {
                r.map_err(|e| anyhow::anyhow!("me: {e}"))?;
            }
        }
    }
    // Build the runtime exactly as `run` does (without binding sockets).
    let _rt = Runtime::build(cfg.clone(), cfg.users.clone(), Telemetry::default());
    println!(
        "{}: ok ({} listener(s), {} user(s), domains: {})",
        file.display(),
        cfg.listen.len(),
        users,
        cfg.domains.join(", ")
    );
    Ok(())
}

fn write_png(cfg: &Config, user: &User, port: u16, path: &std::path::Path) -> anyhow::Result<()> {
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

fn link(a: LinkArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    let (users, _) = users_for(&cfg)?;
    let users: Vec<User> = match &a.user {
        Some(n) => {
            let u: Vec<User> = users.into_iter().filter(|u| &u.name == n).collect();
            anyhow::ensure!(!u.is_empty(), "no user named `{n}`");
            u
        }
        None => users,
    };
    let port = links::public_port(&cfg, None);
    let mut out = std::io::stdout().lock();
    links::print_all(&mut out, &cfg, &users, port, !a.no_qr)?;
    if let Some(png) = &a.png {
        write_png(&cfg, &users[0], port, png)?;
    }
    Ok(())
}

fn secret(domain: &str) -> anyhow::Result<()> {
    mtgate_proto::secret::validate_domain(domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    let key = Key16::generate();
    let s = |kind| ProxySecret {
        key: key.clone(),
        kind,
    };
    println!("secret (config):  {}", hex::encode(key.expose()));
    println!("dd (secure):      {}", s(SecretKind::Dd).to_hex());
    let ee = s(SecretKind::Ee(domain.to_owned()));
    println!("ee (FakeTLS) hex: {}", ee.to_hex());
    println!("ee (FakeTLS) b64: {}", ee.to_base64url());
    Ok(())
}

#[derive(Args, Debug)]
struct DoctorArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Limit for each network check, e.g. `5s` or `500ms`.
    #[arg(long, default_value = "5s", value_parser = crate::doctor::parse_timeout)]
    timeout: Duration,
    /// PEM file of extra CA certificates trusted for the mask site's certificate.
    #[arg(long, value_name = "PEM")]
    mask_ca: Option<PathBuf>,
    /// This server's public IP, to check that the FakeTLS domain resolves to it
    /// (default: `server.public_host` when it is an IP).
    #[arg(long)]
    public_ip: Option<std::net::IpAddr>,
}

/// `mtgate doctor`: exit 0 when no check failed, 1 otherwise, 2 on bad arguments.
fn doctor(a: DoctorArgs) -> ExitCode {
    use crate::doctor::{self, DoctorOpts};
    let source = a.common.config.as_ref().map_or_else(
        || "flags and defaults".to_string(),
        |p| p.display().to_string(),
    );
    let mask_ca = match &a.mask_ca {
        None => Vec::new(),
        Some(p) => match std::fs::read(p)
            .map_err(|e| e.to_string())
            .and_then(|b| doctor::load_pem_certs(&b))
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: --mask-ca {}: {e}", p.display());
                return ExitCode::from(2);
            }
        },
    };
    let opts = DoctorOpts {
        timeout: a.timeout,
        mask_ca,
        public_ip: a.public_ip,
        source: source.clone(),
    };
    let ov = a.common.overrides();
    let loaded = match &a.common.config {
        Some(p) => Config::load(p, &ov),
        None => Config::from_overrides(&ov),
    };
    let report = match loaded {
        Err(e) => doctor::config_failed(&source, &e),
        Ok(cfg) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let report = rt.block_on(doctor::run(&cfg, &opts));
            // A DNS lookup stuck in a blocking thread must not hold the exit.
            rt.shutdown_timeout(Duration::from_millis(100));
            report
        }
    };
    let text = if a.json {
        report.to_json() + "\n"
    } else {
        report.render_text()
    };
    print!("{text}");
    let _ = std::io::stdout().flush();
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
