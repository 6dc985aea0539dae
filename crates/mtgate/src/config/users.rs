//! `[users.NAME]`: names, secrets, modes, ad tags and limits.

use super::raw::RawUser;
use super::{invalid, me, ConfigError, UserLimits};
use mtgate_crypto::Key16;
use mtgate_proto::key::SecretKey;
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

pub use mtgate_proto::handshake::Window;

/// One secret of a user and when it is accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Secret {
    /// The key in memory; or, for a secret in the HSM's digest mode, a
    /// handle that asks the token for the handshake's digests (its bytes
    /// are then not known here, and no link can be made of it).
    pub key: SecretKey,
    pub valid: Window,
    /// Kept in the HSM under this label (`secret = "hsm:LABEL"`): resolved
    /// when the users are built ([`crate::hsm`]).
    pub hsm: Option<String>,
}

impl Secret {
    /// A secret that is always accepted.
    pub fn always(key: Key16) -> Self {
        Self {
            key: key.into(),
            valid: Window::ALWAYS,
            hsm: None,
        }
    }

    /// A name for the secret that does not reveal it: the first 8 hex
    /// digits of its key's SHA-256 (of `hsm:LABEL` for a key in the HSM).
    pub fn id(&self) -> String {
        let digest = match (&self.hsm, self.key.local()) {
            (None, Some(k)) => mtgate_crypto::sha256(&[k.expose()]),
            (label, _) => mtgate_crypto::sha256(&[
                crate::hsm::PREFIX.as_bytes(),
                label.as_deref().unwrap_or_default().as_bytes(),
            ]),
        };
        hex::encode(&digest[..4])
    }

    /// The key's bytes, when they are in memory (not in the HSM's digest mode).
    pub fn bytes(&self) -> Option<&Key16> {
        self.key.local()
    }
}

/// One user: a name, its secrets (16-byte keys, each with a validity window)
/// and the modes allowed.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    /// At least one; several while a rotation runs.
    pub secrets: Vec<Secret>,
    pub modes: Modes,
    /// Limits, quotas and bandwidth (`[users.NAME.limits]`).
    pub limits: UserLimits,
}

impl User {
    /// A user with one secret, always valid.
    pub fn with_key(name: impl Into<String>, key: Key16, modes: Modes) -> Self {
        Self {
            name: name.into(),
            secrets: vec![Secret::always(key)],
            modes,
            limits: UserLimits::default(),
        }
    }

    /// The secret to hand out at `now`: of those valid then, the newest
    /// (latest `not_before`); else the one that starts soonest; else the
    /// first.
    pub fn secret_at(&self, now: u64) -> &Secret {
        let current = self
            .secrets
            .iter()
            .filter(|s| s.valid.contains(now))
            .max_by_key(|s| s.valid.not_before);
        let upcoming = || {
            self.secrets
                .iter()
                .filter(|s| s.valid.not_before > now)
                .min_by_key(|s| s.valid.not_before)
        };
        current.or_else(upcoming).unwrap_or(&self.secrets[0])
    }

    /// The key links name now ([`User::secret_at`]), if its bytes are in
    /// memory (not for a key in the HSM's digest mode).
    pub fn key(&self) -> Option<&Key16> {
        self.secret_at(u64::try_from(crate::civil::unix_now()).unwrap_or(0))
            .bytes()
    }

    /// The client secrets this user can be given now, best (stealthiest)
    /// first; none when the key is kept in the HSM (digest mode).
    pub fn client_secrets(&self, domain: &str) -> Vec<ProxySecret> {
        self.key()
            .map(|k| self.client_secrets_of(k, domain))
            .unwrap_or_default()
    }

    /// The client secrets of one of this user's keys, best first.
    pub fn client_secrets_of(&self, key: &Key16, domain: &str) -> Vec<ProxySecret> {
        let mut v = Vec::new();
        if self.modes.fake_tls {
            v.push(ProxySecret {
                key: key.clone(),
                kind: SecretKind::Ee(domain.to_owned()),
            });
        }
        if self.modes.secure {
            v.push(ProxySecret {
                key: key.clone(),
                kind: SecretKind::Dd,
            });
        }
        if self.modes.classic {
            v.push(ProxySecret {
                key: key.clone(),
                kind: SecretKind::Plain,
            });
        }
        v
    }
}

/// Unix seconds of an RFC 3339 time (`key`: where it was written).
fn unix_time(key: &str, t: &super::user_limits::RawTime) -> Result<u64, ConfigError> {
    chrono::DateTime::parse_from_rfc3339(&t.0)
        .map_err(|e| {
            invalid(
                key,
                format!(
                    "{:?} is not an RFC 3339 time with an offset ({e}); e.g. \"2027-01-01T00:00:00Z\"",
                    t.0
                ),
            )
        })
        .map(|d| u64::try_from(d.timestamp()).unwrap_or(0))
}

/// One secret and its window, as written at `key`.
fn secret(
    key: &str,
    text: &str,
    nb: Option<&super::user_limits::RawTime>,
    na: Option<&super::user_limits::RawTime>,
) -> Result<Secret, ConfigError> {
    let (parsed_key, hsm) = match text.strip_prefix(crate::hsm::PREFIX) {
        Some(label) => {
            if label.is_empty() || label.len() > 64 || !label.bytes().all(|c| c.is_ascii_graphic())
            {
                return Err(invalid(
                    format!("{key}.secret"),
                    "`hsm:LABEL`: a label of 1..64 printable characters",
                ));
            }
            // Read from the token when the users are built.
            (Key16::new([0; 16]), Some(label.to_owned()))
        }
        None => (
            ProxySecret::parse(text)
                .map_err(|e| invalid(format!("{key}.secret"), e.to_string()))?
                .key,
            None,
        ),
    };
    let not_before = nb
        .map(|t| unix_time(&format!("{key}.not_before"), t))
        .transpose()?
        .unwrap_or(0);
    let not_after = na
        .map(|t| unix_time(&format!("{key}.not_after"), t))
        .transpose()?
        .unwrap_or(u64::MAX);
    if not_before > not_after {
        return Err(invalid(format!("{key}.not_after"), "is before not_before"));
    }
    Ok(Secret {
        key: parsed_key.into(),
        valid: Window {
            not_before,
            not_after,
        },
        hsm,
    })
}

/// At most this many secrets a user (a rotation needs two or three).
pub const MAX_SECRETS: usize = 16;

/// Ad tags by user name (ME mode).
pub(super) type AdTags = BTreeMap<String, [u8; 16]>;

/// Every user of `raw` (`default_modes` where a user names none) and the
/// per-user ad tags for ME mode.
pub(super) fn parse(
    raw: BTreeMap<String, RawUser>,
    default_modes: Modes,
) -> Result<(Vec<User>, AdTags), ConfigError> {
    let mut users = Vec::new();
    let mut seen_keys: Vec<SecretKey> = Vec::new();
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
        let mut secrets = Vec::new();
        if let Some(text) = &ru.secret {
            secrets.push(secret(
                &key,
                text,
                ru.not_before.as_ref(),
                ru.not_after.as_ref(),
            )?);
        } else if ru.not_before.is_some() || ru.not_after.is_some() {
            return Err(invalid(
                format!("{key}.not_before"),
                "a window needs `secret` (or use `secrets`)",
            ));
        }
        for (i, rs) in ru.secrets.iter().enumerate() {
            let at = format!("{key}.secrets[{i}]");
            secrets.push(secret(
                &at,
                &rs.secret,
                rs.not_before.as_ref(),
                rs.not_after.as_ref(),
            )?);
        }
        if secrets.is_empty() {
            return Err(invalid(
                format!("{key}.secret"),
                "a secret is required (`secret`, or `secrets` with windows)",
            ));
        }
        if secrets.len() > MAX_SECRETS {
            return Err(invalid(
                format!("{key}.secrets"),
                format!("at most {MAX_SECRETS} secrets a user"),
            ));
        }
        // Keys in the HSM are compared once read (`state::users_for`).
        for s in secrets.iter().filter(|s| s.hsm.is_none()) {
            if seen_keys.contains(&s.key) {
                return Err(invalid(
                    format!("{key}.secret"),
                    "two users share this secret (or one user names it twice)",
                ));
            }
            seen_keys.push(s.key.clone());
        }
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
            secrets,
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
