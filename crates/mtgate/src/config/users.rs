//! `[users.NAME]`: names, secrets, modes, ad tags and limits.

use super::raw::RawUser;
use super::{invalid, me, ConfigError, UserLimits};
use mtgate_crypto::Key16;
use mtgate_proto::secret::{ProxySecret, SecretKind};
use std::collections::BTreeMap;

/// The set of client modes a user may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Modes {
    pub classic: bool,
    pub secure: bool,
    pub fake_tls: bool,
}

impl Modes {
    pub(super) fn parse(key: &str, list: &[String]) -> Result<Self, ConfigError> {
        let mut m = Modes {
            classic: false,
            secure: false,
            fake_tls: false,
        };
        for s in list {
            match s.as_str() {
                "classic" | "plain" => m.classic = true,
                "dd" | "secure" => m.secure = true,
                "ee" | "tls" | "faketls" => m.fake_tls = true,
                other => {
                    return Err(invalid(
                        key,
                        format!("unknown mode `{other}` (use classic, dd, ee)"),
                    ))
                }
            }
        }
        if !(m.classic || m.secure || m.fake_tls) {
            return Err(invalid(key, "at least one mode is required"));
        }
        Ok(m)
    }
}

/// One user: a name, a 16-byte key and the modes allowed.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub key: Key16,
    pub modes: Modes,
    /// Limits, quotas and bandwidth (`[users.NAME.limits]`).
    pub limits: UserLimits,
}

impl User {
    /// The client secrets this user can be given, best (stealthiest) first.
    pub fn client_secrets(&self, domain: &str) -> Vec<ProxySecret> {
        let mut v = Vec::new();
        if self.modes.fake_tls {
            v.push(ProxySecret {
                key: self.key.clone(),
                kind: SecretKind::Ee(domain.to_owned()),
            });
        }
        if self.modes.secure {
            v.push(ProxySecret {
                key: self.key.clone(),
                kind: SecretKind::Dd,
            });
        }
        if self.modes.classic {
            v.push(ProxySecret {
                key: self.key.clone(),
                kind: SecretKind::Plain,
            });
        }
        v
    }
}

/// Ad tags by user name (ME mode).
pub(super) type AdTags = BTreeMap<String, [u8; 16]>;

/// Every user of `raw` (`default_modes` where a user names none) and the
/// per-user ad tags for ME mode.
pub(super) fn parse(
    raw: BTreeMap<String, RawUser>,
    default_modes: Modes,
) -> Result<(Vec<User>, AdTags), ConfigError> {
    let mut users = Vec::new();
    let mut seen_keys: Vec<Key16> = Vec::new();
    let mut user_ad_tags = BTreeMap::new();
    for (name, ru) in raw {
        let key = format!("users.{name}");
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
        {
            return Err(invalid(
                &key,
                "user names are 1..64 characters of letters, digits, - _ .",
            ));
        }
        let secret = ProxySecret::parse(&ru.secret)
            .map_err(|e| invalid(format!("{key}.secret"), e.to_string()))?;
        if seen_keys.contains(&secret.key) {
            return Err(invalid(
                format!("{key}.secret"),
                "two users share this secret",
            ));
        }
        seen_keys.push(secret.key.clone());
        if let Some(t) = &ru.ad_tag {
            user_ad_tags.insert(name.clone(), me::parse_ad_tag(&format!("{key}.ad_tag"), t)?);
        }
        let modes = match &ru.modes {
            Some(m) => Modes::parse(&format!("{key}.modes"), m)?,
            None => default_modes,
        };
        let limits = UserLimits::from_raw(&format!("{key}.limits"), ru.limits)?;
        users.push(User {
            name,
            key: secret.key,
            modes,
            limits,
        });
    }
    Ok((users, user_ad_tags))
}

/// Users kept by the admin API (`state_dir/users.json`): each entry has the
/// shape of a `[users.NAME]` table and passes exactly the config file's
/// checks. An ad tag is the config file's to set.
pub fn parse_json(
    entries: &BTreeMap<String, serde_json::Value>,
    default_modes: Modes,
) -> Result<Vec<User>, ConfigError> {
    let mut raw = BTreeMap::new();
    for (name, v) in entries {
        let key = format!("users.{name}");
        let r: RawUser =
            serde_json::from_value(v.clone()).map_err(|e| invalid(&key, e.to_string()))?;
        if r.ad_tag.is_some() {
            return Err(invalid(
                format!("{key}.ad_tag"),
                "ad tags are set in the config file",
            ));
        }
        raw.insert(name.clone(), r);
    }
    parse(raw, default_modes).map(|(users, _)| users)
}
