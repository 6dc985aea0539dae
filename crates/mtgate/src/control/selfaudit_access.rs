//! `mtgate audit`'s suspicious access patterns, read from the access watch
//! the running proxy keeps per user and saves with its usage in the policy
//! state file (`policy::users::watch`): today and yesterday (UTC).
//!
//! - Far more distinct client addresses than `max_ips` allows (at least three
//!   times the limit and five more than it): the link is shared beyond its
//!   owner, or sold. Without a limit, 200 addresses in a day is worth a look.
//! - Many handshakes the user's key verified that were then refused
//!   (replays, stale FakeTLS timestamps, a mode or SNI it may not use): a
//!   censor or reseller who holds the link probing the proxy with it.
//! - Many connections refused by the user's own limits.

use super::selfaudit::{Finding, Severity};
use crate::config::User;
use crate::policy::users::watch::DAY_MS;
use crate::policy::users::UsersSnapshot;

/// Distinct addresses in a day that stand out for a user without `max_ips`.
pub const UNLIMITED_IPS: u64 = 200;
/// Verified-then-refused handshakes in a day that are a finding.
pub const PROBES: u64 = 10;
/// Refusals by the user's limits in a day that are a finding.
pub const REFUSED: u64 = 50;

/// Findings for `users` from the policy state file in `state_dir`, read
/// only (a file that does not parse is a finding, and left as it is).
pub fn from_state_dir(state_dir: &std::path::Path, users: &[User], now_ms: i64) -> Vec<Finding> {
    let path = state_dir.join(crate::policy::engine::STATE_FILE);
    let unread = |why: String| Finding {
        severity: Severity::Low,
        what: format!("access patterns not checked: {}: {why}", path.display()),
        fix: "check the state directory (the proxy rewrites the file every few seconds)".into(),
    };
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return vec![unread(e.to_string())],
    };
    match serde_json::from_slice::<crate::policy::engine::PolicyState>(&bytes) {
        Ok(state) => run(users, &state.users, now_ms),
        Err(e) => vec![unread(e.to_string())],
    }
}

/// Findings for `users` from the saved `snap` at `now_ms`.
pub fn run(users: &[User], snap: &UsersSnapshot, now_ms: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    let since = now_ms.div_euclid(DAY_MS) - 1;
    for u in users {
        let Some(day) = snap
            .users
            .get(&u.name)
            .and_then(|s| s.watch.as_ref())
            .and_then(|w| w.worst(since))
        else {
            continue;
        };
        let date = crate::civil::format_day(day.day * DAY_MS / 1000);
        let ips = day.distinct_ips();
        match u.limits.max_ips.map(|l| l.max) {
            Some(max) if ips >= (3 * u64::from(max)).max(u64::from(max) + 5) => {
                out.push(Finding {
                    severity: Severity::Medium,
                    what: format!(
                        "user {}: about {ips} distinct client addresses used its secret on {date} \
                         against max_ips = {max}: the link is shared beyond its owner",
                        u.name
                    ),
                    fix: format!(
                        "rotate the user's secret (POST /api/v1/users/{}/rotate) and hand \
                         the new link to its owner only",
                        u.name
                    ),
                });
            }
            None if ips >= UNLIMITED_IPS => out.push(Finding {
                severity: Severity::Low,
                what: format!(
                    "user {}: about {ips} distinct client addresses used its secret on {date} \
                     (no max_ips set)",
                    u.name
                ),
                fix:
                    "if the link is meant for one person or family, set limits.max_ips and rotate \
                      its secret"
                        .into(),
            }),
            _ => {}
        }
        if day.probes >= PROBES {
            out.push(Finding {
                severity: Severity::Medium,
                what: format!(
                    "user {}: {} handshakes with its secret were refused on {date} (replayed, \
                     stale or of a mode it may not use): someone who holds the link is probing \
                     the proxy with it",
                    u.name, day.probes
                ),
                fix: "rotate the user's secret; the replay cache keeps refusing the probes".into(),
            });
        }
        if day.refused >= REFUSED {
            out.push(Finding {
                severity: Severity::Low,
                what: format!(
                    "user {}: its limits refused {} connections on {date}",
                    u.name, day.refused
                ),
                fix: "raise the user's limits if they are too tight, or rotate its secret if \
                      the link is shared"
                    .into(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::users::watch::Watch;
    use crate::policy::users::UserUsage;
    use std::net::{IpAddr, Ipv4Addr};

    const NOW: i64 = 1_800_000_000_000;

    fn user(name: &str, max_ips: Option<u32>) -> User {
        let modes = crate::config::Modes {
            classic: false,
            secure: false,
            fake_tls: true,
        };
        let mut u = User::with_key(name, mtgate_crypto::Key16::generate(), modes);
        u.limits.max_ips = max_ips.map(|max| crate::config::user_limits::IpLimit {
            max,
            window: std::time::Duration::from_secs(3600),
        });
        u
    }

    fn snap(name: &str, at: i64, ips: u32, probes: u64, refused: u64) -> UsersSnapshot {
        let mut w = Watch::default();
        for i in 0..ips {
            w.saw(at, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7)));
        }
        for _ in 0..probes {
            w.probed(at);
        }
        for _ in 0..refused {
            w.refused(at);
        }
        let mut s = UsersSnapshot::default();
        s.users.insert(
            name.into(),
            UserUsage {
                watch: Some(w),
                ..Default::default()
            },
        );
        s
    }

    fn severities(f: &[Finding]) -> Vec<Severity> {
        f.iter().map(|f| f.severity).collect()
    }

    #[test]
    fn a_shared_link_and_probes_are_found() {
        let alice = user("alice", Some(2));
        let f = run(
            std::slice::from_ref(&alice),
            &snap("alice", NOW, 12, 10, 50),
            NOW,
        );
        assert_eq!(
            severities(&f),
            [Severity::Medium, Severity::Medium, Severity::Low],
            "{f:?}"
        );
        assert!(f[0].what.contains("against max_ips = 2"), "{}", f[0].what);
        assert!(f[1].what.contains("10 handshakes"), "{}", f[1].what);
        // Yesterday still counts; the day before that does not.
        let yesterday = snap("alice", NOW - DAY_MS, 12, 0, 0);
        assert_eq!(run(std::slice::from_ref(&alice), &yesterday, NOW).len(), 1);
        let older = snap("alice", NOW - 2 * DAY_MS, 12, 0, 0);
        assert!(run(&[alice], &older, NOW).is_empty());
    }

    #[test]
    fn ordinary_use_is_not_a_finding() {
        // Within three times the limit, a few probes, a few refusals.
        let f = run(
            &[user("bob", Some(3))],
            &snap("bob", NOW, 6, PROBES - 1, REFUSED - 1),
            NOW,
        );
        assert!(f.is_empty(), "{f:?}");
        // Without a limit, many addresses are only low.
        let f = run(&[user("bob", None)], &snap("bob", NOW, 150, 0, 0), NOW);
        assert!(f.is_empty(), "{f:?}");
        let f = run(&[user("bob", None)], &snap("bob", NOW, 400, 0, 0), NOW);
        assert_eq!(severities(&f), [Severity::Low], "{f:?}");
        // A user the snapshot does not know: nothing.
        assert!(run(&[user("carol", Some(1))], &snap("bob", NOW, 40, 40, 0), NOW).is_empty());
    }
}
