//! Security events into the audit trail, from outside the admin API:
//! reloads (the session path's [`Event::Reloaded`], through
//! [`AuditSink`], one more subscriber beside metrics and logs) and
//! reputation blocks (taken from the policy's bounded block log once a
//! second by [`pump_blocks`]; a flood of blocks past that log is recorded
//! as a count), and expiries: a secret's window, a user's `expires` or an
//! admin token running out (looked for every [`EXPIRY_PUMP`] by
//! [`pump_expiries`]), and the HSM's digests failing and answering again
//! ([`pump_hsm`]).

use super::audit::Record;
use super::Control;
use crate::events::{Event, EventSink};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Subscribes the audit trail to the events it records.
pub struct AuditSink(pub Arc<Control>);

impl EventSink for AuditSink {
    fn emit(&self, e: &Event<'_>) {
        if let Event::Link(l) = e {
            self.0.record(&link_record(l));
        }
        if let Event::Reloaded { ok, detail } = e {
            self.0.record(&Record {
                action: "config.reload".into(),
                after: ok.then(|| json!({ "changes": detail })),
                result: if *ok {
                    "ok".into()
                } else {
                    format!("refused: {detail}")
                },
                ..Default::default()
            });
        }
    }
}

/// A link's audit entry: `link.up` (role, cipher, the bridge's name on
/// an exit), `link.down` (why), `link.rekey` (which direction),
/// `link.refused` (why).
fn link_record(l: &crate::link::LinkEvent) -> Record {
    use crate::link::LinkEvent as L;
    match l {
        L::Up {
            role,
            peer,
            cipher,
            bridge,
        } => Record {
            action: "link.up".into(),
            target: Some(peer.to_string()),
            after: Some(json!({ "role": role, "cipher": cipher.name(), "bridge": bridge })),
            result: "ok".into(),
            ..Default::default()
        },
        L::Down { role, peer, reason } => Record {
            action: "link.down".into(),
            target: Some(peer.to_string()),
            after: Some(json!({ "role": role, "reason": reason })),
            result: "ok".into(),
            ..Default::default()
        },
        L::Rekeyed {
            role,
            peer,
            direction,
        } => Record {
            action: "link.rekey".into(),
            target: Some(peer.clone()),
            after: Some(json!({ "role": role, "direction": direction })),
            result: "ok".into(),
            ..Default::default()
        },
        L::Refused { role, peer, reason } => Record {
            action: "link.refused".into(),
            target: Some(peer.to_string()),
            after: Some(json!({ "role": role })),
            result: format!("refused: {reason}"),
            ..Default::default()
        },
    }
}

/// How often the policy's block log is taken.
pub const BLOCK_PUMP: Duration = Duration::from_secs(1);

/// Records the reputation blocks that began, until the process ends.
pub async fn pump_blocks(control: Arc<Control>, policy: Arc<crate::policy::engine::Policy>) {
    loop {
        tokio::time::sleep(BLOCK_PUMP).await;
        record_blocks(&control, &policy);
    }
}

/// One take of the block log.
pub fn record_blocks(control: &Control, policy: &crate::policy::engine::Policy) {
    let (blocks, more) = policy.ips().take_blocks();
    if !blocks.is_empty() {
        // The other nodes block them too (shared state, when configured).
        let now = crate::civil::unix_now().saturating_mul(1000);
        let shared: Vec<super::sync::SharedBlock> = blocks
            .iter()
            .map(|b| super::sync::SharedBlock {
                source: b.source,
                until: now.saturating_add(i64::try_from(b.for_ms).unwrap_or(i64::MAX)),
            })
            .collect();
        control.announce(super::sync::Managed::Blocks, &shared);
    }
    for b in blocks {
        control.record(&Record {
            action: "source.block".into(),
            target: Some(b.source.to_string()),
            after: Some(json!({ "reason": "reputation", "for_secs": b.for_ms.div_ceil(1000) })),
            result: "ok".into(),
            ..Default::default()
        });
    }
    if more > 0 {
        control.record(&Record {
            action: "source.block".into(),
            after: Some(json!({ "reason": "reputation", "more_sources": more })),
            result: "ok".into(),
            ..Default::default()
        });
    }
}

/// How often ends are looked for.
pub const EXPIRY_PUMP: Duration = Duration::from_secs(2);

/// Records every secret, user and token that runs out, and keeps the ages
/// of the secrets in use (`state_dir`'s [`super::ages::FILE`]), until the
/// process ends.
pub async fn pump_expiries(control: Arc<Control>, state_dir: std::path::PathBuf) {
    let mut last = super::now();
    let mut ages = super::ages::load(&state_dir);
    loop {
        if let Ok(view) = control.view() {
            super::ages::observe(&state_dir, &mut ages, &view.secret_starts(), last);
        }
        tokio::time::sleep(EXPIRY_PUMP).await;
        let now = super::now();
        record_expiries(&control, last, now);
        last = now;
    }
}

/// Records what ran out after `after` and by `until` (Unix seconds).
pub fn record_expiries(control: &Control, after: u64, until: u64) {
    let within = |t: u64| t > after && t <= until;
    if let Ok(view) = control.view() {
        for (user, secret, at) in view.ends() {
            if !within(at) {
                continue;
            }
            let (action, detail) = match secret {
                Some(id) => ("secret.expired", json!({ "secret_id": id, "at": at })),
                None => ("user.expired", json!({ "at": at })),
            };
            control.record(&Record {
                action: action.into(),
                target: Some(user),
                after: Some(detail),
                result: "ok".into(),
                ..Default::default()
            });
        }
    }
    for t in control.tokens.list() {
        if let Some(at) = t.expires.filter(|e| within(*e)) {
            control.record(&Record {
                action: "token.expired".into(),
                target: Some(t.id),
                after: Some(json!({ "name": t.name, "role": t.role.name(), "at": at })),
                result: "ok".into(),
                ..Default::default()
            });
        }
    }
}

/// Records the HSM's digests starting to fail (`hsm.error`, with the error
/// and the count) and answering again (`hsm.recovered`), looked at once a
/// second, until the process ends.
pub async fn pump_hsm(control: Arc<Control>, token: String) {
    let mut was = crate::hsm::health();
    loop {
        tokio::time::sleep(BLOCK_PUMP).await;
        let now = crate::hsm::health();
        record_hsm(&control, &token, &was, &now);
        was = now;
    }
}

/// One look at the HSM's health: what changed from `was` to `now`.
pub fn record_hsm(
    control: &Control,
    token: &str,
    was: &crate::hsm::HealthView,
    now: &crate::hsm::HealthView,
) {
    let failed = now.failures.saturating_sub(was.failures);
    // A new failure after a good look, or one that came and went between
    // two looks: an error entry. Failures while it keeps failing: counted in
    // the entry of its recovery.
    if failed > 0 && !was.failing {
        control.record(&Record {
            action: "hsm.error".into(),
            target: Some(token.to_owned()),
            after: Some(json!({ "failed_digests": failed })),
            result: format!("failed: {}", now.last.as_deref().unwrap_or("unknown")),
            ..Default::default()
        });
    }
    if was.failing && !now.failing {
        control.record(&Record {
            action: "hsm.recovered".into(),
            target: Some(token.to_owned()),
            after: Some(json!({ "failed_digests_total": now.failures })),
            result: "ok".into(),
            ..Default::default()
        });
    }
}
