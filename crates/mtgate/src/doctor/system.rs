//! The doctor's host checks: file-descriptor limit, state directory, clock
//! (against the mask site's `Date:` or the DCs' clocks).

use super::Check;
pub use crate::civil::{format_date, parse_http_date};
use crate::config::Config;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fdlimit::{FDS_BASE, FDS_PER_CLIENT};
/// Beyond this the clock is reported even when inside the FakeTLS window.
const CLOCK_WARN_SECS: i64 = 10;

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `RLIMIT_NOFILE` against `server.max_connections`.
pub fn fd_limit(cfg: &Config) -> Check {
    fd_verdict(cfg.max_connections as u64, crate::fdlimit::read())
}

/// `limit` as [`crate::fdlimit::read`] gives it (`u64::MAX`: unlimited).
fn fd_verdict(max_conns: u64, limit: Option<crate::fdlimit::NoFile>) -> Check {
    let name = "fd limit";
    let Some(crate::fdlimit::NoFile { soft, hard }) = limit else {
        return Check::ok(name, "not readable on this system; skipped");
    };
    let want = max_conns.saturating_mul(FDS_PER_CLIENT) + FDS_BASE;
    let show = |v: u64| {
        if v == u64::MAX {
            "unlimited".to_string()
        } else {
            v.to_string()
        }
    };
    // `mtgate run` raises its soft limit to the hard one, then caps the
    // connections it takes at what that carries (crate::fdlimit).
    let (run_soft, unlimited) = (hard, hard == u64::MAX);
    let cap = max_conns.min(crate::fdlimit::cap_for(run_soft));
    let detail = format!(
        "RLIMIT_NOFILE soft {} (hard {}); mtgate run raises the soft limit to the hard one and takes at most {cap} connections at once (server.max_connections = {max_conns} needs ~{want})",
        show(soft),
        show(hard)
    );
    let fix = format!(
        "raise the limit to at least {want}: `LimitNOFILE={want}` in the systemd unit, `ulimit -n {want}` in the shell, or `--ulimit nofile={want}` for containers; or lower server.max_connections to {cap}"
    );
    // Full cap: ok; at least half of it: a warning; less: a failure.
    if unlimited || run_soft >= want {
        Check::ok(name, detail)
    } else if cap > 0 && cap >= max_conns / 2 {
        Check::warn(name, detail, fix)
    } else {
        Check::fail(name, detail, fix)
    }
}

/// The state directory exists and is writable (or can be created).
pub fn state_dir(cfg: &Config) -> Check {
    let dir = &cfg.state_dir;
    let name = "state dir";
    let needed = cfg.users.is_empty() || cfg.me.enabled;
    let fix = format!(
        "make {} writable by the service user (systemd: StateDirectory=mtgate), or set server.state_dir",
        dir.display()
    );
    let bad = |detail: String| {
        if needed {
            Check::fail(name, detail, fix.clone())
        } else {
            Check::warn(name, detail, fix.clone())
        }
    };
    if !dir.exists() {
        let parent = dir
            .ancestors()
            .skip(1)
            .find(|p| p.exists())
            .map(std::path::Path::to_path_buf);
        return match parent {
            Some(p) if writable(&p) => Check::ok(
                name,
                format!("{} does not exist yet; it will be created", dir.display()),
            ),
            _ => bad(format!(
                "{} does not exist and cannot be created",
                dir.display()
            )),
        };
    }
    if writable(dir) {
        Check::ok(name, format!("{} is writable", dir.display()))
    } else {
        bad(format!("{} is not writable", dir.display()))
    }
}

fn writable(dir: &std::path::Path) -> bool {
    let probe = dir.join(format!(".mtgate-doctor-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The local clock against the mask site's `Date:` (preferred) or the DCs'
/// clocks; `(remote, local)` pairs in Unix seconds.
pub fn clock(cfg: &Config, mask_date: Option<(i64, i64)>, dc_times: &[(i64, i64)]) -> Check {
    let past = cfg.max_past.as_secs() as i64;
    let future = cfg.max_future.as_secs() as i64;
    let (source, skew) = match mask_date {
        Some((remote, local)) => ("the mask site's Date: header", local - remote),
        None => {
            let mut skews: Vec<i64> = dc_times.iter().map(|(r, l)| l - r).collect();
            skews.sort_unstable();
            match skews.get(skews.len() / 2) {
                Some(s) => ("the Telegram DCs' clocks", *s),
                None => {
                    return Check::warn(
                        "clock",
                        "no time source answered (no Date: from the mask site, no DC reached)",
                        "make sure the clock is synchronised (`timedatectl status`, `chronyc tracking`)",
                    )
                }
            }
        }
    };
    let how = if skew >= 0 { "ahead of" } else { "behind" };
    let detail = format!(
        "local clock {}s {how} {source} (FakeTLS accepts client clocks {past}s behind to {future}s ahead)",
        skew.abs()
    );
    let fix = "synchronise the clock: enable NTP (`timedatectl set-ntp true`, chrony or systemd-timesyncd); FakeTLS clients outside tls.max_clock_skew_past/future are refused";
    // Our clock ahead by d makes honest clients look d seconds in the past.
    let outside = (skew > 0 && skew > past) || (skew < 0 && -skew > future);
    if outside {
        Check::fail("clock", detail, fix)
    } else if skew.abs() > CLOCK_WARN_SECS {
        Check::warn("clock", detail, fix)
    } else {
        Check::ok("clock", detail)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Status;
    use super::*;
    use crate::config::{Config, Overrides};

    fn nf(soft: u64, hard: u64) -> crate::fdlimit::NoFile {
        crate::fdlimit::NoFile { soft, hard }
    }

    #[test]
    fn fd_verdicts() {
        assert_eq!(fd_verdict(100, Some(nf(1024, 4096))).status, Status::Ok);
        // The soft limit is low but run raises it to the hard one.
        assert_eq!(fd_verdict(1000, Some(nf(256, 4096))).status, Status::Ok);
        assert_eq!(fd_verdict(2000, Some(nf(2500, 3000))).status, Status::Warn);
        let f = fd_verdict(65_536, Some(nf(1024, 4096)));
        assert_eq!(f.status, Status::Fail);
        assert!(
            f.detail.contains("at most 2016 connections"),
            "{}",
            f.detail
        );
        assert!(f.fix.unwrap().contains("LimitNOFILE=131136"));
        assert_eq!(
            fd_verdict(1 << 20, Some(nf(u64::MAX, u64::MAX))).status,
            Status::Ok
        );
    }

    #[test]
    fn clock_window() {
        let cfg = Config::from_toml(
            "[tls]\nmax_clock_skew_past = \"60s\"\nmax_clock_skew_future = \"30s\"\n",
            &Overrides::default(),
        )
        .unwrap();
        let at = |skew: i64| clock(&cfg, Some((1000, 1000 + skew)), &[]).status;
        assert_eq!(at(0), Status::Ok);
        assert_eq!(at(-5), Status::Ok);
        assert_eq!(at(20), Status::Warn);
        assert_eq!(at(61), Status::Fail);
        assert_eq!(at(-31), Status::Fail);
        assert_eq!(at(-25), Status::Warn);
        // DC clocks when the mask gave no date; nothing at all is a warning.
        assert_eq!(
            clock(&cfg, None, &[(1000, 1001), (1000, 1500), (1000, 1002)]).status,
            Status::Ok
        );
        assert_eq!(clock(&cfg, None, &[]).status, Status::Warn);
    }
}
