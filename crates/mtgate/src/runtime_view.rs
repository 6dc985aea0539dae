//! The control plane's read side ([`crate::control::view::View`]) over the
//! running runtime: the service hands it to the control plane at start.

use crate::links;
use crate::runtime::Live;
use std::sync::Arc;

/// The control plane's read side over the running runtime.
pub struct RuntimeView {
    pub live: Arc<Live>,
    /// The public port the links name.
    pub port: u16,
}

impl crate::control::view::View for RuntimeView {
    fn users(&self) -> Vec<crate::control::view::UserView> {
        let rt = self.live.current();
        let host = links::public_host(&rt.config);
        let domain = rt.config.domains.first().cloned().unwrap_or_default();
        let usage = rt.policy.stats().per_user;
        rt.users
            .iter()
            .map(|u| {
                let (up, down, conns) = usage
                    .iter()
                    .find(|(n, ..)| **n == *u.name)
                    .map_or((0, 0, 0), |(_, up, down, c)| (*up, *down, *c));
                let m = u.modes;
                crate::control::view::UserView {
                    name: u.name.clone(),
                    modes: [(m.fake_tls, "ee"), (m.secure, "dd"), (m.classic, "classic")]
                        .into_iter()
                        .filter_map(|(on, n)| on.then_some(n))
                        .collect(),
                    source: crate::control::view::Source::Config,
                    enabled: u.limits.enabled,
                    bytes_up: up,
                    bytes_down: down,
                    connections: conns,
                    links: u
                        .client_secrets(&domain)
                        .iter()
                        .map(|s| s.tg_link(&host, self.port))
                        .collect(),
                }
            })
            .collect()
    }

    fn secrets(&self, name: &str) -> Option<Vec<crate::control::view::SecretView>> {
        let rt = self.live.current();
        let host = links::public_host(&rt.config);
        let domain = rt.config.domains.first().cloned().unwrap_or_default();
        let u = rt.users.iter().find(|u| u.name == name)?;
        let now = crate::control::now();
        let current = u.secret_at(now).key.clone();
        Some(
            u.secrets
                .iter()
                .map(|s| crate::control::view::SecretView {
                    id: s.id(),
                    not_before: (s.valid.not_before != 0).then_some(s.valid.not_before),
                    not_after: (s.valid.not_after != u64::MAX).then_some(s.valid.not_after),
                    state: if s.valid.contains(now) {
                        "in_force"
                    } else if s.valid.not_before > now {
                        "upcoming"
                    } else {
                        "run_out"
                    },
                    current: s.key == current,
                    // None for a key kept in the HSM (digest mode).
                    links: s
                        .bytes()
                        .map(|k| u.client_secrets_of(k, &domain))
                        .unwrap_or_default()
                        .iter()
                        .map(|p| p.tg_link(&host, self.port))
                        .collect(),
                })
                .collect(),
        )
    }

    fn quota(&self, name: &str) -> Option<serde_json::Value> {
        let rt = self.live.current();
        let limits = &rt.users.iter().find(|u| u.name == name)?.limits;
        let usage = rt.policy.users().usage(name)?;
        let time = |ms: i64| crate::civil::rfc3339(u64::try_from(ms / 1000).ok()?);
        Some(serde_json::json!({
            "up": usage.up,
            "down": usage.down,
            "used": usage.up.saturating_add(usage.down),
            "quota": limits.quota,
            "period": usage.period.map(|p| serde_json::json!({
                "kind": p.period,
                "start": time(p.start_ms),
                "end": usage.period_end_ms.and_then(time),
                "used": p.used,
                "quota": limits.period_quota.map(|q| q.bytes),
            })),
            "over_quota": usage.over_quota,
            "connections": usage.active,
        }))
    }

    fn ends(&self) -> Vec<(String, Option<String>, u64)> {
        let rt = self.live.current();
        let mut out = Vec::new();
        for u in rt.users.iter() {
            for s in u.secrets.iter().filter(|s| s.valid.not_after != u64::MAX) {
                out.push((
                    u.name.clone(),
                    Some(s.id()),
                    s.valid.not_after.saturating_add(1),
                ));
            }
            if let Some(ms) = u.limits.expires_ms {
                let secs = u64::try_from(ms.max(0)).unwrap_or(0).div_ceil(1000);
                out.push((u.name.clone(), None, secs));
            }
        }
        out
    }

    fn secret_starts(&self) -> Vec<(String, u64)> {
        let rt = self.live.current();
        rt.users
            .iter()
            .flat_map(|u| u.secrets.iter().map(|s| (s.id(), s.valid.not_before)))
            .collect()
    }

    fn config_rules(&self) -> Vec<crate::control::rules::RuleView> {
        let rt = self.live.current();
        rt.config
            .policy
            .acl
            .rules
            .iter()
            .filter(|r| !r.managed)
            .map(|r| crate::control::rules::RuleView {
                id: None,
                net: r.net.to_string(),
                level: r.level,
                until: None,
                note: if r.window.is_some() {
                    "in force on some days and hours (see the config file)".into()
                } else {
                    String::new()
                },
                source: crate::control::view::Source::Config,
            })
            .collect()
    }

    fn blocks(&self, max: usize) -> Vec<(std::net::IpAddr, i64)> {
        self.live.current().policy.ips().blocks(max)
    }

    fn default_modes(&self) -> crate::config::Modes {
        self.live.current().config.default_modes
    }

    fn stats(&self) -> serde_json::Value {
        let rt = self.live.current();
        let st = rt.policy.stats();
        serde_json::json!({
            "users": rt.users.len(),
            "users_over_quota": st.users_over_quota,
            "connections": st.per_user.iter().map(|u| u.3).sum::<u64>(),
            "bytes_up": st.per_user.iter().map(|u| u.1).sum::<u64>(),
            "bytes_down": st.per_user.iter().map(|u| u.2).sum::<u64>(),
            "sources_tracked": st.ips.tracked,
            "sources_blocked": st.ips.active_blocks,
            "blocks_total": st.ips.blocks_total,
        })
    }
}
