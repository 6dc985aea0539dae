//! `mtgate audit`: a security self-audit of a configuration, its state
//! directory and this binary. Findings carry a severity; a `high` one makes
//! the command exit non-zero, so it can run from cron or CI.
//!
//! Checked now: weak or example secrets, a secret shared by two users,
//! plain obfuscated2 enabled, the admin listener reachable beyond loopback
//! over plain HTTP (without `admin.tls_cert`), admin tokens without an expiry, and the crypto
//! crates linked in, secrets past their window or running out within
//! [`SOON`], and users left with no secret in force or to come; and (in
//! [`super::selfaudit_access`]) users with suspicious access patterns, from
//! what the running proxy saved in the state directory.

use super::tokens::TokenStore;
use crate::config::{Config, User};
use std::collections::HashMap;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

/// One finding: what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    pub fix: String,
}

/// Secrets printed in documentation and examples (ours and other proxies').
const EXAMPLES: [&str; 5] = [
    "00112233445566778899aabbccddeeff",
    "0123456789abcdef0123456789abcdef",
    "00000000000000000000000000000000",
    "ffffffffffffffffffffffffffffffff",
    "dd000102030405060708090a0b0c0d0e",
];

/// Why a 16-byte secret is weak, if it is: an example, or so few distinct
/// bytes or such a run that it was not drawn at random.
fn weakness(key: &[u8; 16]) -> Option<&'static str> {
    let hex = hex::encode(key);
    if EXAMPLES.contains(&hex.as_str()) {
        return Some("an example secret from documentation");
    }
    let mut distinct = key.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    // 16 random bytes have 15 or more distinct values almost always
    // (fewer than 9 has a chance far below 1e-9).
    if distinct.len() < 9 {
        return Some("too few distinct bytes to be random");
    }
    let ascending = key
        .windows(2)
        .filter(|w| w[1] == w[0].wrapping_add(1))
        .count();
    if ascending >= 8 {
        return Some("a counting sequence, not random");
    }
    None
}

/// A secret running out within this many seconds is a finding (7 days).
pub const SOON: u64 = 7 * 86_400;

/// `mtgate audit --max-age-days`' default: a secret in use for a year.
pub const MAX_AGE_DAYS: u64 = 365;

/// Secrets in use longer than `max_age` seconds, from the ages the running
/// proxy keeps ([`super::ages`]); a secret it has not served yet is not
/// judged. One finding a secret, medium: a long-lived link has had a long
/// time to leak.
pub fn aged(users: &[User], ages: &super::ages::Ages, now: u64, max_age: u64) -> Vec<Finding> {
    let mut out = Vec::new();
    for u in users {
        for s in &u.secrets {
            let id = s.id();
            let Some(since) = ages.get(&id) else {
                continue;
            };
            let age = now.saturating_sub(*since);
            if age > max_age && s.valid.not_after >= now {
                out.push(Finding {
                    severity: Severity::Medium,
                    what: format!(
                        "user {}: secret {id} has been in use for {} days (since {}; the limit is {} days)",
                        u.name,
                        age / 86_400,
                        crate::civil::format_day(i64::try_from(*since).unwrap_or(0)),
                        max_age / 86_400
                    ),
                    fix: format!(
                        "rotate it: POST /api/v1/users/{}/rotate, or a new [[users.{}.secrets]] with a not_before",
                        u.name, u.name
                    ),
                });
            }
        }
    }
    out
}

/// Findings about the validity windows of `u`'s secrets at `now`.
fn windows(u: &User, now: u64, out: &mut Vec<Finding>) {
    let open = |s: &&crate::config::Secret| s.valid.not_after >= now;
    if !u.secrets.iter().any(|s| open(&s)) {
        out.push(Finding {
            severity: Severity::High,
            what: format!(
                "user {}: every secret has run out; the user cannot connect",
                u.name
            ),
            fix: "give the user a new secret, or remove the user".into(),
        });
        return;
    }
    for s in &u.secrets {
        let (id, end) = (s.id(), s.valid.not_after);
        if end < now {
            out.push(Finding {
                severity: Severity::Low,
                what: format!("user {}: secret {id} has run out", u.name),
                fix: "remove it from the configuration".into(),
            });
        } else if end - now < SOON
            && !u
                .secrets
                .iter()
                .any(|o| o.valid.not_after > end && open(&o))
        {
            out.push(Finding {
                severity: Severity::Medium,
                what: format!(
                    "user {}: secret {id} runs out within {} days and no later one is set",
                    u.name,
                    SOON / 86_400
                ),
                fix: "add the next secret with a not_before (rotation) and hand out its link"
                    .into(),
            });
        }
    }
}

/// The findings for `cfg` with `users` (and the token store, if one).
pub fn run(cfg: &Config, users: &[User], tokens: Option<&TokenStore>) -> Vec<Finding> {
    let mut out = Vec::new();
    let now = super::now();
    for u in users {
        windows(u, now, &mut out);
    }
    let mut by_secret: HashMap<[u8; 16], Vec<&str>> = HashMap::new();
    for u in users {
        // Keys in the HSM are not in the config to judge.
        for s in u.secrets.iter().filter(|s| s.hsm.is_none()) {
            let Some(key) = s.bytes().map(|k| *k.expose()) else {
                continue;
            };
            by_secret.entry(key).or_default().push(&u.name);
            if let Some(why) = weakness(&key) {
                out.push(Finding {
                    severity: Severity::High,
                    what: format!(
                        "user {}: the secret is weak ({why}; secret {})",
                        u.name,
                        s.id()
                    ),
                    fix: "give the user a new secret from `mtgate secret`".into(),
                });
            }
        }
        if u.modes.classic {
            out.push(Finding {
                severity: Severity::Medium,
                what: format!(
                    "user {}: plain obfuscated2 (classic) is enabled; it is the easiest mode to detect and block",
                    u.name
                ),
                fix: "drop \"classic\" from the user's modes (keep dd and ee)".into(),
            });
        }
    }
    let mut shared: Vec<_> = by_secret.values().filter(|n| n.len() > 1).collect();
    shared.sort();
    for names in shared {
        out.push(Finding {
            severity: Severity::High,
            what: format!(
                "users {} share one secret: their limits, quotas and metrics cannot be told apart, and revoking one revokes all",
                names.join(", ")
            ),
            fix: "give each user a secret of their own".into(),
        });
    }
    if let Some(a) = cfg.admin_listen {
        if !a.ip().is_loopback() && cfg.admin_tls.is_none() {
            out.push(Finding {
                severity: Severity::High,
                what: format!(
                    "the admin listener {a} is reachable beyond loopback and serves plain HTTP (metrics, user names and traffic in the clear; the API refuses credentials from afar)"
                ),
                fix: "set [admin] tls_cert and tls_key, or bind [admin] listen to 127.0.0.1 (or ::1) and reach it over SSH or a private network".into(),
            });
        }
    }
    if cfg.admin_token.is_some() {
        out.push(Finding {
            severity: Severity::Low,
            what: "admin.token is a superuser token without an expiry".into(),
            fix: "create role-limited tokens with an expiry (POST /api/v1/tokens) and keep admin.token for recovery".into(),
        });
    }
    if let Some(t) = tokens {
        let n = t.without_expiry();
        if n > 0 {
            out.push(Finding {
                severity: Severity::Medium,
                what: format!("{n} admin token(s) without an expiry"),
                fix: "revoke them and create tokens with expires_in".into(),
            });
        }
    }
    out.push(Finding {
        severity: Severity::Info,
        what: format!("crypto linked in: {}", env!("MTGATE_CRYPTO_VERSIONS")),
        fix: "keep them current: rebuild after `cargo update` when advisories appear".into(),
    });
    out.sort_by_key(|f| std::cmp::Reverse(f.severity));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, &Overrides::default()).unwrap()
    }

    #[test]
    fn weak_shared_and_risky_settings_are_found() {
        let c = cfg(
            "[admin]\nlisten = \"0.0.0.0:9090\"\ntoken = \"a-long-enough-admin-token\"\n\
             [users.alice]\nsecret = \"00112233445566778899aabbccddeeff\"\nmodes = [\"dd\"]\n\
             [users.bob]\nsecret = \"7d1f0c9a5be24e3186a0f4c2d9b8e617\"\nmodes = [\"classic\", \"dd\"]\n",
        );
        // The configuration refuses a shared secret; users from elsewhere
        // (the state directory, later the API) are checked here.
        let mut users = c.users.clone();
        let mut carol = users[1].clone();
        carol.name = "carol".into();
        users.push(carol);
        let f = run(&c, &users, None);
        let has =
            |sev: Severity, s: &str| f.iter().any(|x| x.severity == sev && x.what.contains(s));
        assert!(has(Severity::High, "user alice: the secret is weak"));
        assert!(has(Severity::High, "users bob, carol share one secret"));
        assert!(has(Severity::High, "beyond loopback"));
        assert!(has(Severity::Medium, "user bob: plain obfuscated2"));
        assert!(has(Severity::Low, "admin.token"));
        assert!(has(Severity::Info, "crypto linked in: "));
        assert_eq!(f[0].severity, Severity::High, "worst first");
    }

    #[test]
    fn a_clean_configuration_has_no_high_finding() {
        let c = cfg(
            "[users.alice]\nsecret = \"7d1f0c9a5be24e3186a0f4c2d9b8e617\"\nmodes = [\"ee\", \"dd\"]\n",
        );
        let f = run(&c, &c.users, None);
        assert!(f.iter().all(|x| x.severity <= Severity::Low), "{f:?}");
        for weak in [[0u8; 16], [7u8; 16], core::array::from_fn(|i| i as u8)] {
            assert!(weakness(&weak).is_some(), "{weak:?}");
        }
        let mut random = [0u8; 16];
        mtgate_crypto::fill_random(&mut random);
        // A random draw is weak with a chance far below 1e-9.
        assert!(weakness(&random).is_none() || EXAMPLES.contains(&hex::encode(random).as_str()));
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;
    use crate::config::{Secret, Window};
    use mtgate_crypto::Key16;

    fn user(windows: &[(u64, u64)]) -> User {
        let mut u = User::with_key(
            "bob",
            Key16::generate(),
            crate::config::Modes {
                classic: false,
                secure: true,
                fake_tls: false,
            },
        );
        u.secrets = windows
            .iter()
            .map(|&(not_before, not_after)| Secret {
                key: Key16::generate().into(),
                valid: Window {
                    not_before,
                    not_after,
                },
                hsm: None,
            })
            .collect();
        u
    }

    fn found(u: &User, now: u64) -> Vec<(Severity, String)> {
        let mut out = Vec::new();
        windows(u, now, &mut out);
        out.into_iter().map(|f| (f.severity, f.what)).collect()
    }

    #[test]
    fn secrets_past_the_maximum_age_are_found() {
        let now = 1_800_000_000;
        let u = user(&[(0, u64::MAX), (0, u64::MAX), (0, now - 1)]);
        let mut ages = crate::control::ages::Ages::new();
        // The first a year and a day old, the second a month, the third
        // old but run out (the windows' finding covers it); none unknown.
        ages.insert(u.secrets[0].id(), now - 366 * 86_400);
        ages.insert(u.secrets[1].id(), now - 30 * 86_400);
        ages.insert(u.secrets[2].id(), now - 900 * 86_400);
        let f = aged(std::slice::from_ref(&u), &ages, now, MAX_AGE_DAYS * 86_400);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].severity, Severity::Medium);
        assert!(f[0].what.contains("in use for 366 days"), "{}", f[0].what);
        assert!(aged(&[u], &ages, now, 400 * 86_400).is_empty());
    }

    #[test]
    fn run_out_and_soon_running_out_secrets_are_found() {
        let now = 1_000_000;
        assert!(found(&user(&[(0, u64::MAX)]), now).is_empty());
        let all_out = found(&user(&[(0, now - 1)]), now);
        assert_eq!(all_out[0].0, Severity::High, "{all_out:?}");
        assert!(all_out[0].1.contains("cannot connect"));
        // Old one out, new one in force: only the leftover is noted.
        let rotated = found(&user(&[(0, now - 1), (now - 10, u64::MAX)]), now);
        assert_eq!(rotated.len(), 1);
        assert_eq!(rotated[0].0, Severity::Low);
        // Running out in a day with nothing after it: medium; with a successor: nothing.
        let soon = found(&user(&[(0, now + 86_400)]), now);
        assert_eq!(soon[0].0, Severity::Medium, "{soon:?}");
        assert!(found(&user(&[(0, now + 86_400), (now + 3_600, u64::MAX)]), now).is_empty());
    }
}
