//! ACL rules and blocks through the control plane (`admin`).
//!
//! Rules made here (a network, a level — `blocked`, `limited`, `full` —, an
//! optional end and a note) are kept in `state_dir/rules.json` and joined to
//! the config file's `[policy.acl]` rules ([`merge`]) wherever a runtime is
//! built: at start, on reload, and when a change here is applied. They rank
//! as the file's do (the most specific network wins; one with an end before
//! one without); past its end a rule is out of force at once (checked per
//! connection) and is dropped from the file at the next change.
//!
//! Blocks are the reputation's: listed from the policy's table and lifted by
//! hand ([`crate::policy::iptable::IpTable::unblock`]).

use super::{Control, ControlError, Principal, Role};
use crate::config::policy::AclRule;
use crate::config::Config;
use crate::policy::acl::{parse_net, Level};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file in the state directory.
pub const FILE: &str = "rules.json";

/// At most this many rules are made here.
pub const MAX_RULES: usize = 10_000;

/// At most this many blocks are listed.
pub const MAX_LISTED_BLOCKS: usize = 1_000;

/// One rule as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    /// A network as the config writes it (`10.0.0.0/8`, `2001:db8::/32`, an address).
    pub net: String,
    pub level: Level,
    /// Unix seconds; `None`: no end.
    pub until: Option<u64>,
    #[serde(default)]
    pub note: String,
    pub created: u64,
    /// The token id that made it.
    pub by: String,
}

/// A rule as the API shows it: one of the file's (no id) or one made here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleView {
    pub id: Option<String>,
    pub net: String,
    pub level: Level,
    pub until: Option<u64>,
    pub note: String,
    pub source: super::view::Source,
}

/// A rule to make.
#[derive(Debug)]
pub struct NewRule {
    pub net: String,
    pub level: String,
    /// Seconds from now; `None`: no end.
    pub expires_in: Option<u64>,
    pub note: String,
}

pub(super) fn read(dir: &Path) -> Result<Vec<Rule>, ControlError> {
    let path = dir.join(FILE);
    match std::fs::read(&path) {
        Ok(t) => serde_json::from_slice(&t)
            .map_err(|e| ControlError::Storage(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(ControlError::Storage(format!("{}: {e}", path.display()))),
    }
}

pub(super) fn write(dir: &Path, rules: &[Rule]) -> Result<(), ControlError> {
    let path = dir.join(FILE);
    let text = serde_json::to_vec_pretty(rules).unwrap_or_default();
    std::fs::create_dir_all(dir)
        .and_then(|()| crate::state::write_atomic(&path, &text))
        .map_err(|e| ControlError::Storage(format!("{}: {e}", path.display())))
}

/// Joins the rules of `cfg.state_dir/rules.json` to the config's ACL rules
/// (replacing any joined before). A bad file is an error; a rule whose
/// network no longer parses is skipped with a warning.
pub fn merge(cfg: &mut Config) -> Result<(), ControlError> {
    let rules = read(&cfg.state_dir)?;
    let acl = &mut cfg.policy.acl.rules;
    acl.retain(|r| !r.managed);
    for r in rules {
        let Some(net) = parse_net(&r.net) else {
            tracing::warn!(rule = %r.id, net = %r.net, "a rule of {FILE} names no network; skipped");
            continue;
        };
        acl.push(AclRule {
            net,
            level: r.level,
            window: None,
            until_ms: r
                .until
                .map(|t| i64::try_from(t.saturating_mul(1000)).unwrap_or(i64::MAX)),
            managed: true,
        });
    }
    Ok(())
}

/// The store of rules: one change at a time.
#[derive(Debug)]
pub struct Rules {
    pub(super) dir: Option<PathBuf>,
    pub(super) lock: Mutex<()>,
}

impl Rules {
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            lock: Mutex::new(()),
        }
    }

    pub fn list(&self) -> Vec<Rule> {
        self.dir
            .as_deref()
            .and_then(|d| read(d).ok())
            .unwrap_or_default()
    }
}

fn shown(r: &Rule) -> serde_json::Value {
    serde_json::json!({ "id": r.id, "net": r.net, "level": r.level, "until": r.until, "note": r.note })
}

impl Control {
    /// Changes the stored rules with `edit` (given them and now), writes,
    /// applies; puts them back if the running proxy refuses.
    fn edit_rules<T>(
        &self,
        edit: impl FnOnce(&mut Vec<Rule>, u64) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let _one = self.rules.lock.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self
            .rules
            .dir
            .as_deref()
            .ok_or_else(|| ControlError::Storage("no state directory".into()))?;
        let before = read(dir)?;
        let mut after = before.clone();
        let now = super::now();
        let out = edit(&mut after, now)?;
        after.retain(|r| r.until.is_none_or(|t| t >= now));
        write(dir, &after)?;
        if let Err(e) = self.apply_managed() {
            write(dir, &before)?;
            return Err(e);
        }
        self.announce(super::sync::Managed::Rules, &after);
        Ok(out)
    }

    /// The config file's rules and those made here (`admin`).
    pub fn rules(&self, by: &Principal) -> Result<Vec<RuleView>, ControlError> {
        by.require(Role::Admin)?;
        let mut out = self.view()?.config_rules();
        out.extend(self.rules.list().into_iter().map(|r| RuleView {
            id: Some(r.id),
            net: r.net,
            level: r.level,
            until: r.until,
            note: r.note,
            source: super::view::Source::Api,
        }));
        Ok(out)
    }

    /// Makes a rule (`admin`); in force for new connections at once.
    pub fn add_rule(&self, by: &Principal, new: NewRule) -> Result<Rule, ControlError> {
        let target = new.net.clone();
        let r = by.require(Role::Admin).and_then(|()| {
            let net = parse_net(new.net.trim()).ok_or_else(|| {
                ControlError::Invalid(format!("net: `{}` is not an address or CIDR", new.net))
            })?;
            let level = Level::parse(&new.level)
                .ok_or_else(|| ControlError::Invalid("level: blocked, limited or full".into()))?;
            if new.note.len() > 256 {
                return Err(ControlError::Invalid("note: at most 256 bytes".into()));
            }
            if new.expires_in == Some(0) {
                return Err(ControlError::Invalid("expires_in: at least 1".into()));
            }
            self.edit_rules(|rules, now| {
                if rules.len() >= MAX_RULES {
                    return Err(ControlError::Invalid(format!(
                        "at most {MAX_RULES} rules are made here"
                    )));
                }
                let rule = Rule {
                    id: format!(
                        "r{}",
                        hex::encode(mtgate_crypto::Key16::generate().expose())[..8].to_owned()
                    ),
                    net: net.to_string(),
                    level,
                    until: new.expires_in.map(|s| now.saturating_add(s)),
                    note: new.note,
                    created: now,
                    by: by.token_id.clone(),
                };
                rules.push(rule.clone());
                Ok(rule)
            })
        });
        let after = r.as_ref().ok().map(shown);
        self.target_record(by, "rule.add", &target, None, after, &r);
        r
    }

    /// Removes a rule made here (`admin`).
    pub fn remove_rule(&self, by: &Principal, id: &str) -> Result<(), ControlError> {
        let mut before = None;
        let r = by.require(Role::Admin).and_then(|()| {
            self.edit_rules(|rules, _| {
                let at = rules
                    .iter()
                    .position(|r| r.id == id)
                    .ok_or(ControlError::NotFound("rule"))?;
                before = Some(shown(&rules.remove(at)));
                Ok(())
            })
        });
        self.target_record(by, "rule.remove", id, before, None, &r);
        r
    }

    /// The config file (secrets redacted), the listeners and the last
    /// reload's outcome (`admin`).
    pub fn config(&self, by: &Principal) -> Result<serde_json::Value, ControlError> {
        by.require(Role::Admin)?;
        Ok(self
            .apply
            .get()
            .ok_or(ControlError::NotFound("running proxy"))?
            .config())
    }

    /// Reloads the config file (`admin`); the summary. A refused file
    /// changes nothing and is `Invalid` with its error.
    pub fn reload(&self, by: &Principal) -> Result<String, ControlError> {
        let r = by.require(Role::Admin).and_then(|()| {
            self.apply
                .get()
                .ok_or(ControlError::NotFound("running proxy"))?
                .reload()
                .map_err(ControlError::Invalid)
        });
        self.target_record(by, "config.reload.request", "config", None, None, &r);
        r
    }

    /// The sources the reputation blocks now, with their ends (`admin`).
    pub fn blocks(&self, by: &Principal) -> Result<Vec<(IpAddr, i64)>, ControlError> {
        by.require(Role::Admin)?;
        Ok(self.view()?.blocks(MAX_LISTED_BLOCKS))
    }

    /// Lifts the reputation block of `ip`'s source (`admin`).
    pub fn unblock(&self, by: &Principal, ip: &str) -> Result<(), ControlError> {
        let r = by.require(Role::Admin).and_then(|()| {
            let addr: IpAddr = ip
                .parse()
                .map_err(|_| ControlError::Invalid(format!("`{ip}` is not an address")))?;
            let lifted = self
                .apply
                .get()
                .ok_or(ControlError::NotFound("running proxy"))?
                .unblock(addr);
            if lifted {
                // Lifted on the other nodes too (shared state).
                let lift = [super::sync::SharedBlock {
                    source: addr,
                    until: super::sync::LIFTED,
                }];
                self.announce(super::sync::Managed::Blocks, &lift);
                Ok(())
            } else {
                Err(ControlError::NotFound("block"))
            }
        });
        self.target_record(by, "block.remove", ip, None, None, &r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rules_join_the_config_and_replace_the_last_join() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::from_toml(
            &format!(
                "[server]\nstate_dir = \"{}\"\n[[policy.acl.rules]]\ncidr = \"10.0.0.0/8\"\nlevel = \"limited\"\n",
                dir.path().display()
            ),
            &crate::config::Overrides::default(),
        )
        .unwrap();
        let rule = |id: &str, net: &str, until| Rule {
            id: id.into(),
            net: net.into(),
            level: Level::Blocked,
            until,
            note: String::new(),
            created: 1,
            by: "config".into(),
        };
        write(
            dir.path(),
            &[
                rule("r1", "192.0.2.0/24", Some(2_000)),
                rule("r2", "nonsense", None),
            ],
        )
        .unwrap();
        merge(&mut cfg).unwrap();
        merge(&mut cfg).unwrap();
        let acl = &cfg.policy.acl.rules;
        assert_eq!(
            acl.len(),
            2,
            "the file's rule and one joined once; a bad net skipped"
        );
        assert!(!acl[0].managed && acl[1].managed);
        assert_eq!(acl[1].until_ms, Some(2_000_000));
        write(dir.path(), &[]).unwrap();
        merge(&mut cfg).unwrap();
        assert_eq!(cfg.policy.acl.rules.len(), 1);
        std::fs::write(dir.path().join(FILE), b"{").unwrap();
        assert!(merge(&mut cfg).is_err());
    }
}
