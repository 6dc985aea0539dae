//! User commands (`standard`): create, update (modes, limits, enabled) and
//! delete the users managed in `state_dir/users.json` ([`super::users`]).
//! Each change is checked with the config file's code, written atomically,
//! then applied to the running proxy; a change the proxy refuses is undone.
//! Every command, refusals included, writes an audit entry with the user's
//! entry before and after (never its secret).

use super::users::{Entries, MAX_USERS};
use super::{view, Control, ControlError, Principal, Role};
use serde_json::{Map, Value};

/// A user to create.
#[derive(Debug, Default)]
pub struct NewUser {
    pub name: String,
    /// Any form a link or the config takes (32 hex digits, `dd…`, `ee…`);
    /// `None`: a random one.
    pub secret: Option<String>,
    /// `None`: the config's `default_modes`.
    pub modes: Option<Vec<String>>,
    /// `[users.NAME.limits]` as JSON.
    pub limits: Option<Map<String, Value>>,
}

/// A change to a managed user; what is `None` stays.
#[derive(Debug, Default)]
pub struct UserPatch {
    pub modes: Option<Vec<String>>,
    /// Merged key by key into the limits; a `null` removes that key.
    pub limits: Option<Map<String, Value>>,
    /// Shorthand for `limits.enabled`.
    pub enabled: Option<bool>,
}

/// The id of a secret as written (see [`crate::config::Secret::id`]).
pub(super) fn secret_id(text: &str) -> Option<String> {
    mtgate_proto::secret::ProxySecret::parse(text)
        .ok()
        .map(|p| crate::config::Secret::always(p.key).id())
}

/// An entry as the audit trail shows it: its secrets by id, never themselves.
pub(super) fn shown(entry: &Value) -> Value {
    let mut v = entry.clone();
    let Some(m) = v.as_object_mut() else {
        return v;
    };
    if let Some(s) = m.remove("secret") {
        m.insert(
            "secret_id".into(),
            s.as_str()
                .and_then(secret_id)
                .map_or(Value::Null, Value::String),
        );
    }
    if let Some(Value::Array(list)) = m.get_mut("secrets") {
        for item in list.iter_mut() {
            if let Some(o) = item.as_object_mut() {
                if let Some(s) = o.remove("secret") {
                    o.insert(
                        "id".into(),
                        s.as_str()
                            .and_then(secret_id)
                            .map_or(Value::Null, Value::String),
                    );
                }
            }
        }
    }
    v
}

/// Checks one entry with the config file's code.
pub(super) fn check(
    name: &str,
    entry: &Value,
    default_modes: crate::config::Modes,
) -> Result<(), ControlError> {
    let mut one = Entries::new();
    one.insert(name.to_owned(), entry.clone());
    crate::config::parse_users_json(&one, default_modes)
        .map(drop)
        .map_err(|e| ControlError::Invalid(e.to_string()))
}

impl Control {
    pub(super) fn target_record<T>(
        &self,
        by: &Principal,
        action: &str,
        name: &str,
        before: Option<Value>,
        after: Option<Value>,
        result: &Result<T, ControlError>,
    ) {
        self.change_record(by, action, Some(name.to_owned()), before, after, result);
    }

    /// The managed entry of `name`, or why there is none: `Conflict` for a
    /// user of the config file, `NotFound` for no user at all.
    pub(super) fn managed_entry(
        &self,
        entries: &Entries,
        name: &str,
    ) -> Result<Value, ControlError> {
        if let Some(e) = entries.get(name) {
            return Ok(e.clone());
        }
        if self.view()?.users().iter().any(|u| u.name == name) {
            return Err(ControlError::Conflict(format!(
                "user `{name}` is defined in the config file; change it there"
            )));
        }
        Err(ControlError::NotFound("user"))
    }

    /// The user as the API shows it, links included (the caller is `standard`).
    fn shown_user(&self, name: &str) -> Result<view::UserView, ControlError> {
        let mut u = self
            .view()?
            .users()
            .into_iter()
            .find(|u| u.name == name)
            .ok_or(ControlError::NotFound("user"))?;
        u.source = view::Source::Api;
        Ok(u)
    }

    /// Creates a managed user (`standard`).
    pub fn create_user(
        &self,
        by: &Principal,
        new: NewUser,
    ) -> Result<view::UserView, ControlError> {
        let name = new.name.clone();
        let mut after = None;
        let r = by
            .require(Role::Standard)
            .and_then(|()| self.create_user_checked(new, &mut after));
        self.target_record(by, "user.create", &name, None, after, &r);
        r
    }

    fn create_user_checked(
        &self,
        new: NewUser,
        shown_after: &mut Option<Value>,
    ) -> Result<view::UserView, ControlError> {
        let view = self.view()?;
        let secret = match &new.secret {
            Some(s) => {
                mtgate_proto::secret::ProxySecret::parse(s)
                    .map_err(|e| ControlError::Invalid(format!("secret: {e}")))?
                    .key
            }
            None => mtgate_crypto::Key16::generate(),
        };
        let mut entry = serde_json::json!({ "secret": hex::encode(secret.expose()) });
        if let Some(m) = &new.modes {
            entry["modes"] = serde_json::json!(m);
        }
        if let Some(l) = new.limits {
            entry["limits"] = Value::Object(l);
        }
        check(&new.name, &entry, self.default_modes())?;
        let name = new.name;
        self.change_users(
            |e| {
                if e.contains_key(&name) || view.users().iter().any(|u| u.name == name) {
                    return Err(ControlError::Exists(format!("user `{name}`")));
                }
                if e.len() >= MAX_USERS {
                    return Err(ControlError::Invalid(format!(
                        "at most {MAX_USERS} users are managed here"
                    )));
                }
                e.insert(name.clone(), entry.clone());
                Ok(())
            },
            || self.apply_managed(),
        )?;
        *shown_after = Some(shown(&entry));
        self.shown_user(&name)
    }

    /// Changes a managed user's modes, limits or whether it may connect
    /// (`standard`). A disabled user's sessions are drained.
    pub fn update_user(
        &self,
        by: &Principal,
        name: &str,
        patch: UserPatch,
    ) -> Result<view::UserView, ControlError> {
        let mut seen = (None, None);
        let r = by
            .require(Role::Standard)
            .and_then(|()| self.update_user_checked(name, patch, &mut seen));
        self.target_record(by, "user.update", name, seen.0, seen.1, &r);
        r
    }

    fn update_user_checked(
        &self,
        name: &str,
        patch: UserPatch,
        seen: &mut (Option<Value>, Option<Value>),
    ) -> Result<view::UserView, ControlError> {
        let modes = self.default_modes();
        let (before, after) = self.change_users(
            |e| {
                let before = self.managed_entry(e, name)?;
                let mut entry = before.clone();
                if let Some(m) = &patch.modes {
                    entry["modes"] = serde_json::json!(m);
                }
                if patch.limits.is_some() || patch.enabled.is_some() {
                    let mut limits = entry
                        .get("limits")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_default();
                    for (k, v) in patch.limits.iter().flatten() {
                        if v.is_null() {
                            limits.remove(k);
                        } else {
                            limits.insert(k.clone(), v.clone());
                        }
                    }
                    if let Some(on) = patch.enabled {
                        limits.insert("enabled".into(), Value::Bool(on));
                    }
                    entry["limits"] = Value::Object(limits);
                }
                check(name, &entry, modes)?;
                e.insert(name.to_owned(), entry.clone());
                Ok((before, entry))
            },
            || self.apply_managed(),
        )?;
        *seen = (Some(shown(&before)), Some(shown(&after)));
        self.shown_user(name)
    }

    /// Deletes a managed user (`standard`); its sessions are drained.
    pub fn delete_user(&self, by: &Principal, name: &str) -> Result<(), ControlError> {
        let mut before = None;
        let r = by.require(Role::Standard).and_then(|()| {
            let b = self.change_users(
                |e| {
                    let b = self.managed_entry(e, name)?;
                    e.remove(name);
                    Ok(b)
                },
                || self.apply_managed(),
            )?;
            before = Some(shown(&b));
            Ok(())
        });
        self.target_record(by, "user.delete", name, before, None, &r);
        r
    }

    /// A user's usage toward its quotas (`read_only`).
    pub fn quota(&self, by: &Principal, name: &str) -> Result<Value, ControlError> {
        by.require(Role::ReadOnly)?;
        self.view()?
            .quota(name)
            .ok_or(ControlError::NotFound("user"))
    }

    /// Resets a user's usage (`standard`): the current period's, or with
    /// `period_only` false the lifetime bytes too. Any user, the config
    /// file's included: usage is the proxy's, not the file's.
    pub fn reset_quota(
        &self,
        by: &Principal,
        name: &str,
        period_only: bool,
    ) -> Result<Value, ControlError> {
        let mut before = None;
        let r = by.require(Role::Standard).and_then(|()| {
            before = self.view()?.quota(name);
            let done = self
                .apply
                .get()
                .ok_or(ControlError::NotFound("running proxy"))?
                .reset_quota(name, period_only)
                .map_err(ControlError::Storage)?;
            if !done {
                return Err(ControlError::NotFound("user"));
            }
            // Every node resets it too (shared state).
            let reset = super::sync::QuotaReset {
                user: name.to_owned(),
                period_only,
                at: super::now(),
            };
            self.announce(super::sync::Managed::Quota, &reset);
            self.view()?
                .quota(name)
                .ok_or(ControlError::NotFound("user"))
        });
        let after = r.as_ref().ok().cloned();
        let action = if period_only {
            "quota.reset_period"
        } else {
            "quota.reset"
        };
        self.target_record(by, action, name, before, after, &r);
        r
    }

    /// The modes a user gets when it names none.
    pub(super) fn default_modes(&self) -> crate::config::Modes {
        self.view().map_or(
            crate::config::Modes {
                classic: false,
                secure: true,
                fake_tls: true,
            },
            |v| v.default_modes(),
        )
    }
}
