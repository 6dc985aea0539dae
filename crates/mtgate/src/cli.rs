//! The command line: `run`, `check`, `link`, `secret`, `doctor`, `audit`: argument
//! parsing and the small commands; `run` hands over to [`crate::service`].
//! `anyhow` lives here and in `service` only; everything below returns typed
//! errors.

use crate::config::{Config, Overrides, User};
use crate::events::Telemetry;
use crate::links;
use crate::runtime::Runtime;
use clap::{Args, Parser, Subcommand};
use mtgate_crypto::Key16;
use mtgate_proto::secret::{ProxySecret, SecretKind};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
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
    /// A security self-audit of the configuration, its state and this
    /// binary: findings with severities, exit 1 on a high one (for cron or
    /// CI). `mtgate audit verify` checks the audit trail's hash chain
    /// instead and exits 1 at the first entry edited, removed, inserted or
    /// out of order.
    Audit {
        #[command(subcommand)]
        what: Option<AuditCmd>,
        /// The configuration to audit (default: the built-in one).
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// A secret in use longer than this many days is a finding.
        #[arg(long, default_value_t = crate::control::selfaudit::MAX_AGE_DAYS)]
        max_age_days: u64,
    },
    /// Make a new random secret inside the HSM (`[hsm]` of the config) and
    /// print it in every form; give a user `secret = "hsm:LABEL"`.
    Hsm {
        /// The configuration naming the HSM.
        #[arg(short, long)]
        config: PathBuf,
        /// The new key's label in the token.
        #[arg(long)]
        label: String,
    },
    /// Keys for a proxy-to-proxy link: a new exit key pair (or the public
    /// half of an existing one) and a new bridge token, printed as the
    /// lines `[link.exit]` and `[link.bridge]` take.
    LinkKeys {
        /// The exit's existing secret key (a file holding it in base64);
        /// default: a new one.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The bridge's name in the exit's `tokens`.
        #[arg(long, default_value = "bridge")]
        bridge: String,
    },
    /// Generate a new random secret and print it in every form.
    Secret {
        /// Also print the `ee` (FakeTLS) form for this domain.
        #[arg(long, default_value = crate::config::DEFAULT_DOMAIN)]
        domain: String,
    },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the audit trail's hash chain.
    Verify {
        /// The configuration whose state directory holds the trail.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// The state directory (instead of the configuration's).
        #[arg(long)]
        state_dir: Option<PathBuf>,
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
    /// Serve an own website for this host name on the client port (links name it). Repeatable.
    #[arg(long)]
    site_host: Vec<String>,
    /// The own site's static directory (with --site-host).
    #[arg(long)]
    site_dir: Option<String>,
    /// The own site as a reverse proxy to `http://host:port` (with --site-host).
    #[arg(long)]
    site_upstream: Option<String>,
    /// The own site's PEM certificate chain (with --site-key).
    #[arg(long)]
    site_cert: Option<String>,
    /// The own site's PEM private key (with --site-cert).
    #[arg(long)]
    site_key: Option<String>,
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
            site_hosts: self.site_host.clone(),
            site_dir: self.site_dir.clone(),
            site_upstream: self.site_upstream.clone(),
            site_cert: self.site_cert.clone(),
            site_key: self.site_key.clone(),
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
    /// Zero-downtime upgrade: take the listening sockets over from the mtgate
    /// answering on `server.handover_socket`, which then drains and exits.
    /// With no process answering there, start normally.
    #[arg(long)]
    takeover: bool,
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
        Cmd::Run(a) => a.common.load().and_then(|cfg| {
            crate::service::run(crate::service::Start {
                cfg,
                config_path: a.common.config.clone(),
                overrides: a.common.overrides(),
                takeover: a.takeover,
                no_qr: a.no_qr,
                qr_png: a.qr_png,
            })
        }),
        Cmd::Check { file } => check(&file),
        Cmd::Link(a) => link(a),
        Cmd::Secret { domain } => secret(&domain),
        Cmd::LinkKeys { key_file, bridge } => link_keys(key_file.as_deref(), &bridge),
        Cmd::Doctor(a) => return doctor(a),
        Cmd::Audit {
            what: Some(AuditCmd::Verify { config, state_dir }),
            ..
        } => audit_verify(config, state_dir),
        Cmd::Audit {
            what: None,
            config,
            max_age_days,
        } => return self_audit(config, max_age_days),
        Cmd::Hsm { config, label } => hsm_create(&config, &label),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn self_audit(config: Option<PathBuf>, max_age_days: u64) -> ExitCode {
    let run = || -> anyhow::Result<bool> {
        let cfg = match &config {
            Some(c) => Config::load(c, &Overrides::default())?,
            None => Config::from_overrides(&Overrides::default())?,
        };
        // The file's users, the generated default one only if it exists
        // (nothing is created), and those of the admin API; HSM keys stay
        // labels (they are not judged by their bytes).
        let users = crate::state::users_unresolved(&cfg, false)?.0;
        let tokens = crate::control::tokens::TokenStore::open(Some(cfg.state_dir.clone())).ok();
        let mut findings = crate::control::selfaudit::run(&cfg, &users, tokens.as_ref());
        let now_ms = crate::civil::unix_now().saturating_mul(1000);
        findings.extend(crate::control::selfaudit_access::from_state_dir(
            &cfg.state_dir,
            &users,
            now_ms,
        ));
        findings.extend(crate::control::selfaudit::aged(
            &users,
            &crate::control::ages::load(&cfg.state_dir),
            crate::control::now(),
            max_age_days.saturating_mul(86_400),
        ));
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        let mut high = false;
        for f in &findings {
            high |= f.severity == crate::control::selfaudit::Severity::High;
            println!(
                "[{}] {}
    fix: {}",
                f.severity.name(),
                f.what,
                f.fix
            );
        }
        let worst = findings
            .iter()
            .map(|f| f.severity)
            .max()
            .unwrap_or(crate::control::selfaudit::Severity::Info);
        println!(
            "{} finding(s); the worst is {}",
            findings.len(),
            worst.name()
        );
        Ok(high)
    };
    match run() {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn audit_verify(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> anyhow::Result<()> {
    let dir = match (state_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => Config::load(&c, &Overrides::default())?.state_dir,
        (None, None) => Config::from_overrides(&Overrides::default())?.state_dir,
    };
    let trail = dir.join(crate::control::audit::FILE);
    if !trail.exists() {
        anyhow::bail!("no audit trail at {}", trail.display());
    }
    let v = crate::control::audit::verify(&dir, crate::control::audit::DEFAULT_KEEP)?;
    println!(
        "audit trail intact: {} entries ({}..{}) in {} file(s) at {}",
        v.entries,
        v.first_seq,
        v.first_seq + v.entries.saturating_sub(1),
        v.files,
        trail.display()
    );
    Ok(())
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
    let _rt = Runtime::build(cfg.clone(), cfg.users.clone(), Telemetry::default())?;
    println!(
        "{}: ok ({} listener(s), {} user(s), domains: {})",
        file.display(),
        cfg.listen.len(),
        users,
        cfg.domains.join(", ")
    );
    println!("policy: {}", cfg.policy.rate.summary());
    Ok(())
}

fn link(a: LinkArgs) -> anyhow::Result<()> {
    let cfg = a.common.load()?;
    let (users, _) = crate::service::users_for(&cfg)?;
    let users: Vec<User> = match &a.user {
        Some(n) => {
            let u: Vec<User> = users.into_iter().filter(|u| &u.name == n).collect();
            anyhow::ensure!(!u.is_empty(), "no user named `{n}`");
            u
        }
        None => users,
    };
    // The links of the proxy as it runs: its recorded port and host when an
    // mtgate runs with this state directory, else the configuration's.
    let mut cfg = cfg;
    let port = match crate::running::read(&cfg.state_dir) {
        Some(r) if a.common.listen.is_empty() => {
            eprintln!(
                "# links of the mtgate running with {} (pid {}): port {}",
                cfg.state_dir.display(),
                r.pid,
                r.port
            );
            if cfg.public_host.is_none() {
                cfg.public_host = Some(r.public_host);
            }
            r.port
        }
        _ => {
            let p = links::public_port(&cfg, None);
            eprintln!(
                "# no running mtgate recorded in {}: port {p} assumed from the configuration (pass the config or flags `run` was given)",
                cfg.state_dir.display()
            );
            p
        }
    };
    let mut out = std::io::stdout().lock();
    links::print_all(&mut out, &cfg, &users, port, !a.no_qr)?;
    if let Some(png) = &a.png {
        crate::service::write_png(&cfg, &users[0], port, png)?;
    }
    Ok(())
}

fn hsm_create(config: &std::path::Path, label: &str) -> anyhow::Result<()> {
    let cfg = Config::load(config, &Overrides::default())?;
    let hsm = cfg
        .hsm
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} has no [hsm] section", config.display()))?;
    let key = crate::hsm::create_key(hsm, label)?;
    match hsm.mode {
        crate::hsm::HsmMode::Digest => println!(
            "created a 16-byte key labelled `{label}` (and `{}`, its HMAC form) in token `{}`, \
             sensitive and not extractable: the proxy computes its digests inside the token. \
             Its client forms are printed here once; give a user `secret = \"hsm:{label}\"`",
            crate::hsm::kept::hmac_label(label),
            hsm.token
        ),
        crate::hsm::HsmMode::Unwrap => println!(
            "created a 16-byte key labelled `{label}` in token `{}` (unwrap mode: the proxy reads \
             it at start); give a user `secret = \"hsm:{label}\"`",
            hsm.token
        ),
    }
    let domain = cfg
        .domains
        .first()
        .map_or(crate::config::DEFAULT_DOMAIN, String::as_str);
    print_forms(&key, domain);
    Ok(())
}

/// A key in every form a client takes.
fn print_forms(key: &Key16, domain: &str) {
    let s = |kind| ProxySecret {
        key: key.clone(),
        kind,
    };
    println!("dd (secure):      {}", s(SecretKind::Dd).to_hex());
    let ee = s(SecretKind::Ee(domain.to_owned()));
    println!("ee (FakeTLS) hex: {}", ee.to_hex());
    println!("ee (FakeTLS) b64: {}", ee.to_base64url());
}

fn link_keys(key_file: Option<&std::path::Path>, bridge: &str) -> anyhow::Result<()> {
    use crate::link::config::{b64, key32};
    use mtgate_proto::link::handshake::{ExitKey, Token};
    let (key, new) = match key_file {
        None => (ExitKey::generate(), true),
        Some(p) => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
            );
            let k = key32(&text)
                .ok_or_else(|| anyhow::anyhow!("{}: not 32 bytes in base64", p.display()))?;
            (ExitKey::from_secret(k), false)
        }
    };
    let token = Token::generate();
    println!("# On the exit, [link.exit]:");
    if new {
        println!("key = \"{}\"", b64(key.secret()));
    }
    println!("tokens = {{ {bridge} = \"{}\" }}", b64(token.bytes()));
    println!();
    println!("# On the bridge, [link.bridge]:");
    println!("exit_key = \"{}\"", b64(&key.public()));
    println!("token = \"{}\"", b64(token.bytes()));
    Ok(())
}

fn secret(domain: &str) -> anyhow::Result<()> {
    mtgate_proto::secret::validate_domain(domain).map_err(|e| anyhow::anyhow!("--domain: {e}"))?;
    let key = Key16::generate();
    println!("secret (config):  {}", hex::encode(key.expose()));
    print_forms(&key, domain);
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
