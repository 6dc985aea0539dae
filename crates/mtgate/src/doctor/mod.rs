//! `mtgate doctor`: checks a deployment from the inside and says how to fix
//! what is wrong (docs/operations.md, "Doctor").
//!
//! Checks, in report order:
//!
//! 1. `config`: the file loads and validates with the same code as `run`
//!    ([`Config::load`] + [`Runtime::build`]); a broken file is reported by
//!    [`config_failed`] with the key at fault;
//! 2. `bind …`: every `server.listen` address and the admin address can be bound
//!    (bound with [`crate::server::bind`], then dropped);
//! 3. `fd limit`: `RLIMIT_NOFILE` against `server.max_connections`;
//! 4. `state dir`: writable (the generated secret, ME copies);
//! 5. `me …` (when `[me]` is enabled): the Telegram files load, and each middle
//!    proxy completes the RPC handshake ([`crate::me::conn::open`]);
//! 6. `dc N ADDR`: each DC address answers TCP, our obfuscated2 header
//!    ([`crate::upstream::dial`]) and an unencrypted `req_pq_multi` with a
//!    `resPQ` echoing our nonce ([`mtgate_proto::probe`]);
//! 7. `mask host`, `mask certificate`, `mask dns`: TLS to the mask host with the
//!    first domain as SNI, its certificate against webpki-roots (plus
//!    `--mask-ca`), and whether the domain resolves to this server;
//! 8. `clock`: the local clock against the mask site's `Date:` header (else the
//!    DCs' message ids), judged by the FakeTLS skew window.
//!
//! Network checks run in parallel, each under [`DoctorOpts::timeout`], so the
//! whole run is bounded. Nothing secret is ever printed.

mod mask;
mod net;
mod site;
mod system;

use crate::config::{Config, ConfigError};
use rustls::pki_types::CertificateDer;
use serde::Serialize;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            detail: detail.into(),
            fix: None,
        }
    }

    pub fn warn(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Warn,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    pub fn fail(
        name: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            status: Status::Fail,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Every check, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

/// How the doctor runs.
#[derive(Clone, Debug)]
pub struct DoctorOpts {
    /// Limit for each network check (connect + answer).
    pub timeout: Duration,
    /// Extra trust anchors for the mask site's certificate (`--mask-ca`).
    pub mask_ca: Vec<CertificateDer<'static>>,
    /// This server's public address, when `server.public_host` is not an IP.
    pub public_ip: Option<IpAddr>,
    /// Where the config came from, for the report (`file.toml`, or "flags and defaults").
    pub source: String,
}

impl Default for DoctorOpts {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            mask_ca: Vec::new(),
            public_ip: None,
            source: "flags and defaults".into(),
        }
    }
}

impl Report {
    /// The worst status of any check (`Ok` for an empty report).
    pub fn worst(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    /// At least one check failed: the process exits non-zero.
    pub fn failed(&self) -> bool {
        self.worst() == Status::Fail
    }

    fn count(&self, s: Status) -> usize {
        self.checks.iter().filter(|c| c.status == s).count()
    }

    /// A plain-text table: status, check, detail, and an indented fix line.
    pub fn render_text(&self) -> String {
        let w = self
            .checks
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(5)
            .max(5);
        let mut out = String::new();
        let _ = writeln!(out, "{:<6} {:<w$}  DETAIL", "STATUS", "CHECK");
        for c in &self.checks {
            let _ = writeln!(out, "{:<6} {:<w$}  {}", c.status.label(), c.name, c.detail);
            if let Some(f) = &c.fix {
                let _ = writeln!(out, "{:<6} {:<w$}  fix: {f}", "", "");
            }
        }
        let verdict = match self.worst() {
            Status::Ok => "healthy",
            Status::Warn => "working, with warnings",
            Status::Fail => "NOT healthy",
        };
        let _ = writeln!(
            out,
            "\n{} checks: {} ok, {} warn, {} fail: {verdict}",
            self.checks.len(),
            self.count(Status::Ok),
            self.count(Status::Warn),
            self.count(Status::Fail)
        );
        out
    }

    /// The report as one JSON object: `{"status": …, "checks": [...]}`.
    pub fn to_json(&self) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            status: Status,
            ok: usize,
            warn: usize,
            fail: usize,
            checks: &'a [Check],
        }
        let out = Out {
            status: self.worst(),
            ok: self.count(Status::Ok),
            warn: self.count(Status::Warn),
            fail: self.count(Status::Fail),
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

/// The report for a config that does not load: one failed `config` check
/// naming the key at fault (nothing else can be checked without a config).
pub fn config_failed(source: &str, err: &ConfigError) -> Report {
    let fix = match err {
        ConfigError::Read { path, .. } => {
            format!("check that {path} exists and is readable by this user (or pass --config)")
        }
        ConfigError::Invalid { key, .. } if key.starts_with("--") => {
            format!("fix the {key} flag (see `mtgate doctor --help`)")
        }
        ConfigError::Invalid { key, .. } => {
            format!("fix `{key}` in {source} (see docs/config.md), then `mtgate check {source}`")
        }
        ConfigError::At { key, at, .. } => format!(
            "fix `{key}` on line {} of {source} (see docs/config.md), then `mtgate check {source}`",
            at.line
        ),
    };
    Report {
        checks: vec![Check::fail("config", format!("{source}: {err}"), fix)],
    }
}

/// Runs every check against a loaded config.
pub async fn run(cfg: &Config, opts: &DoctorOpts) -> Report {
    let mut checks = vec![config_ok(cfg, opts)];
    checks.extend(net::binds(cfg));
    checks.push(system::fd_limit(cfg));
    checks.push(system::state_dir(cfg));
    let me_files = if cfg.me.enabled {
        let (check, files) = net::me_files(cfg);
        checks.push(check);
        files
    } else {
        None
    };
    let public_ip = opts
        .public_ip
        .or_else(|| cfg.public_host.as_deref().and_then(|h| h.parse().ok()));
    let (dcs, me, mask) = tokio::join!(
        net::dcs(cfg, opts.timeout),
        net::me_links(cfg, me_files.as_ref(), opts.timeout),
        async {
            // With an own site there is no outside mask host to check.
            if cfg.site.enabled() {
                site::check(cfg, opts, public_ip).await
            } else {
                mask::check(cfg, opts, public_ip).await
            }
        },
    );
    checks.extend(me);
    checks.extend(dcs.checks);
    checks.extend(mask.checks);
    checks.push(system::clock(cfg, mask.date, &dcs.server_times));
    Report { checks }
}

fn config_ok(cfg: &Config, opts: &DoctorOpts) -> Check {
    // Built exactly as `check` does: on a thread without a tokio runtime, so
    // nothing is started (no ME pool, no copies of the ME files saved).
    let c = cfg.clone();
    let built = std::thread::spawn(move || {
        let users = c.users.clone();
        crate::runtime::Runtime::build(c, users, crate::events::Telemetry::default())
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .join();
    if let Ok(Err(e)) = &built {
        return Check::fail(
            "config",
            format!("{}: {e}", opts.source),
            "fix the file the policy names (policy.acl.files, policy.geo.database) or its path",
        );
    }
    if built.is_err() {
        return Check::fail(
            "config",
            format!("{}: loads, but building the runtime panicked", opts.source),
            "report a bug with this config (secrets removed)",
        );
    }
    let users = if cfg.users.is_empty() {
        "the generated default user".to_string()
    } else {
        format!("{} user(s)", cfg.users.len())
    };
    Check::ok(
        "config",
        format!(
            "{}: valid ({} listener(s), {users}, domains: {}{})",
            opts.source,
            cfg.listen.len(),
            cfg.domains.join(", "),
            if cfg.me.enabled { ", ME mode" } else { "" }
        ),
    )
}

/// A duration as milliseconds with one decimal (`0.4 ms`, `23.0 ms`).
pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

/// Parses `--timeout`: `5s`, `500ms`, `2m` or plain seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: want a duration like 5s or 500ms"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("`{s}`: unknown unit (use ms, s or m)")),
    };
    if !(0.01..=600.0).contains(&secs) {
        return Err(format!("`{s}`: want between 10ms and 10m"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Reads PEM certificates (`--mask-ca`).
pub fn load_pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE block found".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_timeout("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_timeout("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("5h").is_err());
        assert!(parse_timeout("fast").is_err());
    }

    #[test]
    fn report_renders_and_counts() {
        let r = Report {
            checks: vec![
                Check::ok("config", "valid"),
                Check::warn("dc 2 [::1]:443", "no route", "ignore"),
                Check::fail("bind 0.0.0.0:443", "in use", "stop it"),
            ],
        };
        assert!(r.failed());
        let t = r.render_text();
        assert!(t.contains("FAIL   bind 0.0.0.0:443  in use"), "{t}");
        assert!(t.contains("fix: stop it"), "{t}");
        assert!(t.contains("3 checks: 1 ok, 1 warn, 1 fail"), "{t}");
        let j: serde_json::Value = serde_json::from_str(&r.to_json()).unwrap();
        assert_eq!(j["status"], "fail");
        assert_eq!(j["checks"][1]["status"], "warn");
        assert!(j["checks"][0].get("fix").is_none());
        assert!(!Report::default().failed());
    }

    #[test]
    fn config_failure_names_the_key() {
        let e = Config::from_toml("[server]\nmax_connections = 0\n", &Default::default())
            .expect_err("invalid");
        let r = config_failed("x.toml", &e);
        assert!(r.failed());
        let fix = r.checks[0].fix.clone().unwrap();
        assert!(fix.contains("`server.max_connections`"), "{fix}");
    }
}
