//! Admin edits shared with the other nodes (issue 16): a change made here
//! to the managed rules or users is announced ([`Control::announce`], through the
//! shared state's hook); a change announced by another node is taken
//! ([`Control::take_remote`]): written to this node's state directory and
//! applied as a local edit is, without announcing it again, and recorded in
//! the audit trail.

use super::audit::Record;
use super::{Control, ControlError};

/// What a node announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Managed {
    /// The ACL rules made through the admin API (`rules.json`).
    Rules,
    /// The users made through the admin API (`users.json`).
    Users,
    /// Reputation blocks that began on a node: `[{source, until}]`, Unix ms.
    Blocks,
    /// The admin tokens (`admin-tokens.json`: hashes, never tokens).
    Tokens,
    /// A user's usage reset toward its quotas: [`QuotaReset`].
    Quota,
}

/// A quota reset made on one node, for every node.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuotaReset {
    pub user: String,
    pub period_only: bool,
    /// Unix seconds: a reset older than [`QUOTA_RESET_FRESH`] is not taken
    /// (a node starting later must not reset the usage again).
    pub at: u64,
}

/// How old a quota reset may be when a node takes it.
pub const QUOTA_RESET_FRESH: u64 = 60;

impl Managed {
    pub fn name(self) -> &'static str {
        match self {
            Managed::Rules => "rules",
            Managed::Users => "users",
            Managed::Blocks => "blocks",
            Managed::Tokens => "tokens",
            Managed::Quota => "quota",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "rules" => Some(Managed::Rules),
            "users" => Some(Managed::Users),
            "blocks" => Some(Managed::Blocks),
            "tokens" => Some(Managed::Tokens),
            "quota" => Some(Managed::Quota),
            _ => None,
        }
    }

    /// Every kind, as announced.
    pub const ALL: [&'static str; 5] = ["rules", "users", "blocks", "tokens", "quota"];
}

/// A reputation block shared with the other nodes.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SharedBlock {
    pub source: std::net::IpAddr,
    /// Unix ms; [`LIFTED`]: lifted through the admin API.
    pub until: i64,
}

/// The `until` of a block lifted by hand.
pub const LIFTED: i64 = 0;

/// How a change made here reaches the other nodes: called with what
/// changed and its content as JSON.
#[derive(Clone)]
pub struct Announce(pub std::sync::Arc<dyn Fn(Managed, Vec<u8>) + Send + Sync>);

impl std::fmt::Debug for Announce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Announce")
    }
}

impl Control {
    /// Connects announcements to the shared state (once, at start).
    pub fn set_announce(&self, a: Announce) {
        let _ = self.announce.set(a);
    }

    /// [`super::users::Store::change`] with the running proxy applying it,
    /// announced to the other nodes when it took.
    pub(super) fn change_users<T>(
        &self,
        change: impl FnOnce(&mut super::users::Entries) -> Result<T, ControlError>,
        apply: impl FnOnce() -> Result<(), ControlError>,
    ) -> Result<T, ControlError> {
        let out = self.managed.change(change, apply)?;
        self.announce(Managed::Users, &self.managed.entries());
        Ok(out)
    }

    pub(super) fn announce<T: serde::Serialize>(&self, what: Managed, content: &T) {
        if let (Some(a), Ok(bytes)) = (self.announce.get(), serde_json::to_vec(content)) {
            (a.0)(what, bytes);
        }
    }

    /// Takes `what` as another node (`from`) announced it: written here and
    /// applied if it differs from this node's; `Ok(false)` when it did not.
    pub fn take_remote(
        &self,
        what: Managed,
        content: &[u8],
        from: &str,
    ) -> Result<bool, ControlError> {
        match what {
            Managed::Rules => {
                let rules: Vec<super::rules::Rule> = serde_json::from_slice(content)
                    .map_err(|e| ControlError::Invalid(format!("rules from {from}: {e}")))?;
                if rules.len() > super::rules::MAX_RULES {
                    return Err(ControlError::Invalid(format!(
                        "rules from {from}: too many"
                    )));
                }
                let file = ManagedFile {
                    lock: &self.rules.lock,
                    dir: self.rules.dir.as_deref(),
                    read: |d| super::rules::read(d),
                    write: |d, v| super::rules::write(d, v),
                };
                self.take_file(what, from, &file, rules)
            }
            Managed::Users => {
                let entries: super::users::Entries = serde_json::from_slice(content)
                    .map_err(|e| ControlError::Invalid(format!("users from {from}: {e}")))?;
                let modes = crate::config::Modes {
                    classic: false,
                    secure: true,
                    fake_tls: true,
                };
                crate::config::parse_users_json(&entries, modes)
                    .map_err(|e| ControlError::Invalid(format!("users from {from}: {e}")))?;
                let file = ManagedFile {
                    lock: &self.managed.lock,
                    dir: self.managed.dir.as_deref(),
                    read: |d| Ok(super::users::read(d)?),
                    write: |d, v| Ok(super::users::write(d, v)?),
                };
                self.take_file(what, from, &file, entries)
            }
            Managed::Tokens => {
                let records: Vec<super::tokens::TokenRecord> = serde_json::from_slice(content)
                    .map_err(|e| ControlError::Invalid(format!("tokens from {from}: {e}")))?;
                if records.len() > 10_000 {
                    return Err(ControlError::Invalid(format!(
                        "tokens from {from}: too many"
                    )));
                }
                let count = records.len();
                let Some(gone) = self.tokens.replace(records)? else {
                    return Ok(false);
                };
                for id in &gone {
                    self.sessions.end_of_token(id);
                }
                self.record(&Record {
                    action: "tokens.sync".into(),
                    target: Some(from.to_owned()),
                    after: Some(serde_json::json!({ "tokens": count, "revoked": gone })),
                    result: "ok".into(),
                    ..Default::default()
                });
                Ok(true)
            }
            Managed::Quota => {
                let reset: QuotaReset = serde_json::from_slice(content).map_err(|e| {
                    ControlError::Invalid(format!("a quota reset from {from}: {e}"))
                })?;
                if super::now().saturating_sub(reset.at) > QUOTA_RESET_FRESH {
                    return Ok(false);
                }
                let done = self
                    .apply
                    .get()
                    .ok_or(ControlError::NotFound("running proxy"))?
                    .reset_quota(&reset.user, reset.period_only)
                    .map_err(ControlError::Storage)?;
                if done {
                    self.record(&Record {
                        action: "quota.sync".into(),
                        target: Some(from.to_owned()),
                        after: Some(serde_json::json!({ "user": reset.user, "period_only": reset.period_only })),
                        result: "ok".into(),
                        ..Default::default()
                    });
                }
                Ok(done)
            }
            Managed::Blocks => {
                let blocks: Vec<SharedBlock> = serde_json::from_slice(content)
                    .map_err(|e| ControlError::Invalid(format!("blocks from {from}: {e}")))?;
                let apply = self
                    .apply
                    .get()
                    .ok_or(ControlError::NotFound("running proxy"))?;
                let now = crate::civil::unix_now().saturating_mul(1000);
                let mut taken = 0;
                for b in blocks.iter().take(super::rules::MAX_LISTED_BLOCKS) {
                    if b.until == LIFTED {
                        taken += usize::from(apply.unblock(b.source));
                    } else if b.until > now {
                        apply.block(b.source, u64::try_from(b.until - now).unwrap_or(0));
                        taken += 1;
                    }
                }
                if taken > 0 {
                    self.record(&Record {
                        action: "blocks.sync".into(),
                        target: Some(from.to_owned()),
                        after: Some(serde_json::json!({
                            "blocked": blocks.iter().filter(|b| b.until > now).map(|b| b.source.to_string()).collect::<Vec<_>>(),
                            "lifted": blocks.iter().filter(|b| b.until == LIFTED).map(|b| b.source.to_string()).collect::<Vec<_>>(),
                        })),
                        result: "ok".into(),
                        ..Default::default()
                    });
                }
                Ok(taken > 0)
            }
        }
    }
}

/// A managed file of the state directory: its lock, where, how it is read
/// and written.
struct ManagedFile<'a, T> {
    lock: &'a std::sync::Mutex<()>,
    dir: Option<&'a std::path::Path>,
    read: fn(&std::path::Path) -> Result<T, ControlError>,
    write: fn(&std::path::Path, &T) -> Result<(), ControlError>,
}

/// How many entries a managed file's content holds, for the audit trail.
trait Count {
    fn count(&self) -> usize;
}

impl<T> Count for Vec<T> {
    fn count(&self) -> usize {
        self.len()
    }
}

impl<K, V> Count for std::collections::BTreeMap<K, V> {
    fn count(&self) -> usize {
        self.len()
    }
}

impl Control {
    /// Writes `new` to `file` and applies it, unless it is there already;
    /// the old content back if the running proxy refuses it; audited as
    /// `WHAT.sync` from node `from`.
    fn take_file<T: PartialEq + Count>(
        &self,
        what: Managed,
        from: &str,
        file: &ManagedFile<'_, T>,
        new: T,
    ) -> Result<bool, ControlError> {
        let _one = file.lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = file
            .dir
            .ok_or_else(|| ControlError::Storage("no state directory".into()))?;
        let before = (file.read)(dir)?;
        if before == new {
            return Ok(false);
        }
        (file.write)(dir, &new)?;
        let applied = self.apply_managed();
        if let Err(e) = &applied {
            (file.write)(dir, &before)?;
            tracing::warn!(error = %e, node = %from, what = what.name(), "an edit from another node refused");
        }
        self.record(&Record {
            action: format!("{}.sync", what.name()),
            target: Some(from.to_owned()),
            after: Some(serde_json::json!({ what.name(): new.count() })),
            result: match &applied {
                Ok(()) => "ok".into(),
                Err(e) => format!("refused: {e}"),
            },
            ..Default::default()
        });
        applied.map(|()| true)
    }
}
