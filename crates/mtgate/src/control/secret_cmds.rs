//! Secret commands (`standard`) on users managed here: list, add (with a
//! window), rotate (a new secret now or later; the others run out after a
//! grace period, so clients can move over) and revoke (at once: the user's
//! sessions are drained). Entries keep their secrets as `secrets` (the
//! `[[users.NAME.secrets]]` shape), each written as the config file would.
//! The audit trail names secrets by id only.

use super::user_cmds::{check, secret_id, shown};
use super::view::SecretView;
use super::{Control, ControlError, Principal, Role};
use crate::config::MAX_SECRETS;
use serde_json::{json, Value};

/// Rotation's default grace: a week for clients to take the new link.
pub const DEFAULT_GRACE: u64 = 7 * 86_400;

/// A secret to add.
#[derive(Debug, Default)]
pub struct NewSecret {
    /// Any form the config takes; `None`: a random one.
    pub secret: Option<String>,
    /// Unix seconds; `None`: open.
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
}

/// RFC 3339 (UTC) of Unix seconds, as the config file takes it.
fn rfc3339(t: u64) -> Result<String, ControlError> {
    crate::civil::rfc3339(t).ok_or_else(|| ControlError::Invalid(format!("{t} is not a time")))
}

/// The Unix seconds of an RFC 3339 time in an entry.
fn unix(v: Option<&Value>) -> Option<u64> {
    let t = chrono::DateTime::parse_from_rfc3339(v?.as_str()?).ok()?;
    u64::try_from(t.timestamp()).ok()
}

/// The entry's secrets as a list of `{secret, not_before?, not_after?}`,
/// `secret` and its window folded in first.
fn secrets_of(entry: &Value) -> Vec<Value> {
    let mut list = Vec::new();
    if let Some(s) = entry.get("secret") {
        let mut one = json!({ "secret": s });
        for k in ["not_before", "not_after"] {
            if let Some(t) = entry.get(k) {
                one[k] = t.clone();
            }
        }
        list.push(one);
    }
    if let Some(Value::Array(more)) = entry.get("secrets") {
        list.extend(more.iter().cloned());
    }
    list
}

/// `entry` with exactly `list` as its secrets.
fn with_secrets(entry: &Value, list: Vec<Value>) -> Value {
    let mut e = entry.clone();
    if let Some(m) = e.as_object_mut() {
        for k in ["secret", "not_before", "not_after"] {
            m.remove(k);
        }
        m.insert("secrets".into(), Value::Array(list));
    }
    e
}

fn random_secret() -> String {
    hex::encode(mtgate_crypto::Key16::generate().expose())
}

impl Control {
    /// The secrets of a user (`standard`: their links hold them).
    pub fn secrets(&self, by: &Principal, name: &str) -> Result<Vec<SecretView>, ControlError> {
        by.require(Role::Standard)?;
        self.view()?
            .secrets(name)
            .ok_or(ControlError::NotFound("user"))
    }

    /// Changes the secrets of managed user `name` with `edit` (given the list
    /// and now), checked, written, applied; records `action` with the entry
    /// before and after. Returns what `edit` returns.
    fn edit_secrets<T>(
        &self,
        by: &Principal,
        action: &str,
        name: &str,
        edit: impl FnOnce(&mut Vec<Value>, u64) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut seen = (None, None);
        let r = by.require(Role::Standard).and_then(|()| {
            let modes = self.default_modes();
            self.change_users(
                |e| {
                    let before = self.managed_entry(e, name)?;
                    let mut list = secrets_of(&before);
                    let out = edit(&mut list, super::now())?;
                    if list.len() > MAX_SECRETS {
                        return Err(ControlError::Invalid(format!(
                            "at most {MAX_SECRETS} secrets a user; revoke one first"
                        )));
                    }
                    let after = with_secrets(&before, list);
                    check(name, &after, modes)?;
                    e.insert(name.to_owned(), after.clone());
                    seen = (Some(shown(&before)), Some(shown(&after)));
                    Ok(out)
                },
                || self.apply_managed(),
            )
        });
        self.target_record(by, action, name, seen.0, seen.1, &r);
        r
    }

    /// The view of secret `id` of `name` once applied.
    fn secret_view(&self, name: &str, id: &str) -> Result<SecretView, ControlError> {
        self.view()?
            .secrets(name)
            .and_then(|l| l.into_iter().find(|s| s.id == id))
            .ok_or(ControlError::NotFound("secret"))
    }

    /// Adds a secret to managed user `name` (`standard`).
    pub fn add_secret(
        &self,
        by: &Principal,
        name: &str,
        new: NewSecret,
    ) -> Result<SecretView, ControlError> {
        let id = self.edit_secrets(by, "user.secret.add", name, |list, _| {
            let text = new.secret.unwrap_or_else(random_secret);
            let id = secret_id(&text)
                .ok_or_else(|| ControlError::Invalid("secret: not a proxy secret".into()))?;
            let mut one = json!({ "secret": text });
            if let Some(t) = new.not_before {
                one["not_before"] = Value::String(rfc3339(t)?);
            }
            if let Some(t) = new.not_after {
                one["not_after"] = Value::String(rfc3339(t)?);
            }
            list.push(one);
            Ok(id)
        })?;
        self.secret_view(name, &id)
    }

    /// Rotates managed user `name` (`standard`): a new random secret valid
    /// from `starts_in` seconds on; every secret valid past that start plus
    /// `grace` now ends there; secrets already run out are dropped.
    pub fn rotate(
        &self,
        by: &Principal,
        name: &str,
        grace: u64,
        starts_in: u64,
    ) -> Result<SecretView, ControlError> {
        let id = self.edit_secrets(by, "user.secret.rotate", name, |list, now| {
            let start = now.saturating_add(starts_in);
            let end = start.saturating_add(grace);
            let end_text = rfc3339(end)?;
            list.retain(|s| unix(s.get("not_after")).is_none_or(|t| t >= now));
            for s in list.iter_mut() {
                if unix(s.get("not_after")).is_none_or(|t| t > end) {
                    s["not_after"] = Value::String(end_text.clone());
                }
            }
            let text = random_secret();
            let id = secret_id(&text).unwrap_or_default();
            list.push(json!({ "secret": text, "not_before": rfc3339(start)? }));
            Ok(id)
        })?;
        self.secret_view(name, &id)
    }

    /// Revokes secret `id` of managed user `name` at once (`standard`): its
    /// clients are refused and the user's sessions drained. The last secret
    /// is not revoked (delete the user instead).
    pub fn revoke_secret(&self, by: &Principal, name: &str, id: &str) -> Result<(), ControlError> {
        self.edit_secrets(by, "user.secret.revoke", name, |list, _| {
            let before = list.len();
            list.retain(|s| {
                s.get("secret")
                    .and_then(Value::as_str)
                    .and_then(secret_id)
                    .as_deref()
                    != Some(id)
            });
            if list.len() == before {
                return Err(ControlError::NotFound("secret"));
            }
            if list.is_empty() {
                return Err(ControlError::Conflict(
                    "the user's last secret: delete the user instead".into(),
                ));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_fold_into_one_list_and_back() {
        let e = json!({
            "secret": "00112233445566778899aabbccddeeff",
            "not_after": "2027-01-01T00:00:00Z",
            "modes": ["dd"],
            "secrets": [{ "secret": "0f0e0d0c0b0a09080706050403020100" }],
        });
        let list = secrets_of(&e);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0]["not_after"], "2027-01-01T00:00:00Z");
        let back = with_secrets(&e, list);
        assert!(back.get("secret").is_none() && back.get("not_after").is_none());
        assert_eq!(back["modes"], json!(["dd"]));
        assert_eq!(back["secrets"].as_array().unwrap().len(), 2);
        let shown = shown(&back);
        assert!(!shown
            .to_string()
            .contains("00112233445566778899aabbccddeeff"));
        assert_eq!(shown["secrets"][0]["id"].as_str().unwrap().len(), 8);
        assert_eq!(
            unix(Some(&json!("2027-01-01T00:00:00Z"))),
            Some(1_798_761_600)
        );
        assert_eq!(rfc3339(1_798_761_600).unwrap(), "2027-01-01T00:00:00+00:00");
    }
}
