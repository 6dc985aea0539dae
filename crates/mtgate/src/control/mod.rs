//! The control plane (issue 13): who may change what, and the typed
//! commands the admin API, the console and the CLI call. Front ends parse,
//! call one command and render its result; the session path never calls in
//! here (it learns of changes through the runtime it already reads).
//!
//! Landed so far: admin tokens with roles ([`tokens`]), sign-in sessions and
//! the per-address limit on failed authentication ([`auth`]), and the
//! hash-chained audit trail every command writes to ([`audit`]): who, with
//! which role, from where, what, before → after, and the result, refusals
//! included. A change whose entry cannot be written stands (the proxy keeps
//! serving); the failure is logged as an error.

pub mod ages;
pub mod audit;
pub mod auth;
pub mod rules;
mod secret_cmds;
pub mod security;
pub mod selfaudit;
pub mod selfaudit_access;
pub mod sync;
pub mod tokens;
mod user_cmds;
pub mod users;
pub mod view;

pub use secret_cmds::{NewSecret, DEFAULT_GRACE};
pub use user_cmds::{NewUser, UserPatch};

use std::net::IpAddr;
use std::path::PathBuf;

/// What a token may do, each role including the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Authenticates, may do nothing (a parked or audit-only token).
    None,
    /// Reads everything but secrets and tokens.
    ReadOnly,
    /// Users and quotas.
    Standard,
    /// Rules, blocks and the configuration.
    Admin,
    /// Tokens and roles.
    Superuser,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::None,
        Role::ReadOnly,
        Role::Standard,
        Role::Admin,
        Role::Superuser,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::ReadOnly => "read_only",
            Role::Standard => "standard",
            Role::Admin => "admin",
            Role::Superuser => "superuser",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == s)
    }
}

/// Who is asking: a token's identity and role, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's id (`config` for `admin.token`), never the token.
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub from: IpAddr,
    /// Signed in with a session (rather than the token itself).
    pub session: bool,
}

impl Principal {
    /// `Ok` when this principal's role reaches `need`.
    pub fn require(&self, need: Role) -> Result<(), ControlError> {
        if self.role >= need {
            Ok(())
        } else {
            Err(ControlError::Forbidden { need })
        }
    }
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    #[error("this needs the {} role", need.name())]
    Forbidden { need: Role },
    #[error("{0}")]
    Invalid(String),
    /// Not allowed for this bearer, whatever its role.
    #[error("{0}")]
    Refused(String),
    #[error("no such {0}")]
    NotFound(&'static str),
    #[error("{0} already exists")]
    Exists(String),
    /// The change collides with what owns the thing (the config file).
    #[error("{0}")]
    Conflict(String),
    #[error("saving the change failed: {0}")]
    Storage(String),
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Why a request was not authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthError {
    /// No bearer, or one no token or session matches (or expired, or from
    /// outside its networks: all answered alike).
    Refused,
    /// Too many failures from this address lately.
    Limited,
}

/// The control plane: tokens, sign-in sessions, failed-login limits, the
/// audit trail.
#[derive(Debug)]
pub struct Control {
    pub tokens: tokens::TokenStore,
    pub sessions: auth::Sessions,
    pub failures: auth::Failures,
    pub audit: audit::Audit,
    /// Users managed here (`state_dir/users.json`).
    pub managed: users::Store,
    /// ACL rules made here (`state_dir/rules.json`).
    pub rules: rules::Rules,
    view: std::sync::OnceLock<std::sync::Arc<dyn view::View>>,
    apply: std::sync::OnceLock<std::sync::Arc<dyn Apply>>,
    /// Tells the other nodes of a change made here (shared state).
    announce: std::sync::OnceLock<sync::Announce>,
}

/// How a change made here reaches the running proxy: the service rebuilds
/// its runtime with the managed users and rules (as a reload does) and
/// swaps it in; a block is lifted in the policy's table.
pub trait Apply: Send + Sync {
    /// Takes the managed users and rules now; `Err`: refused, the running
    /// ones stay.
    fn apply_managed(&self) -> Result<(), String>;
    /// Lifts the reputation block of `ip`'s source; `false`: none.
    fn unblock(&self, ip: IpAddr) -> bool;
    /// Blocks `ip`'s source for `for_ms` (another node's reputation block).
    fn block(&self, ip: IpAddr, for_ms: u64);
    /// Reloads the config file now (as `SIGHUP` does): the summary or why not.
    fn reload(&self) -> Result<String, String>;
    /// The config file as it is (secrets redacted), the running listeners,
    /// and the last reload's outcome.
    fn config(&self) -> serde_json::Value;
    /// Resets a user's usage (the period's, or all) and saves the policy
    /// state at once; `Ok(false)`: no such user.
    fn reset_quota(&self, user: &str, period_only: bool) -> Result<bool, String>;
}

impl std::fmt::Debug for dyn Apply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Apply")
    }
}

impl From<users::StoreError> for ControlError {
    fn from(e: users::StoreError) -> Self {
        ControlError::Storage(e.to_string())
    }
}

impl std::fmt::Debug for dyn view::View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("View")
    }
}

impl Control {
    /// The control plane whose state lives in `dir` (memory only: `None`).
    pub fn open(dir: Option<PathBuf>, config_token: Option<&str>) -> Result<Self, ControlError> {
        Self::open_with(dir, config_token, auth::MAX_FAILURES)
    }

    /// [`Control::open`] allowing `failures` failed authentications an
    /// address a minute.
    pub fn open_with(
        dir: Option<PathBuf>,
        config_token: Option<&str>,
        failures: u32,
    ) -> Result<Self, ControlError> {
        let audit =
            audit::Audit::open(dir.as_deref()).map_err(|e| ControlError::Storage(e.to_string()))?;
        let managed = users::Store::new(dir.clone());
        let rules = rules::Rules::new(dir.clone());
        let tokens = tokens::TokenStore::open(dir)?;
        tokens.set_config_token(config_token);
        Ok(Self {
            tokens,
            sessions: auth::Sessions::default(),
            failures: auth::Failures::new(failures),
            audit,
            managed,
            rules,
            view: std::sync::OnceLock::new(),
            apply: std::sync::OnceLock::new(),
            announce: std::sync::OnceLock::new(),
        })
    }

    /// Connects the read side to the running proxy (once, at start).
    pub fn set_view(&self, v: std::sync::Arc<dyn view::View>) {
        let _ = self.view.set(v);
    }

    /// Connects changes of the managed users to the running proxy (once, at start).
    pub fn set_apply(&self, a: std::sync::Arc<dyn Apply>) {
        let _ = self.apply.set(a);
    }

    fn apply_managed(&self) -> Result<(), ControlError> {
        self.apply
            .get()
            .ok_or(ControlError::NotFound("running proxy"))?
            .apply_managed()
            .map_err(ControlError::Invalid)
    }

    fn view(&self) -> Result<&std::sync::Arc<dyn view::View>, ControlError> {
        self.view
            .get()
            .ok_or(ControlError::NotFound("running proxy"))
    }

    /// The users (`read_only`; their links from `standard` up).
    pub fn users(&self, by: &Principal) -> Result<Vec<view::UserView>, ControlError> {
        by.require(Role::ReadOnly)?;
        let mut users = self.view()?.users();
        let managed = self.managed.entries();
        for u in &mut users {
            if managed.contains_key(&u.name) && u.source == view::Source::Config {
                u.source = view::Source::Api;
            }
        }
        if by.role < Role::Standard {
            users.iter_mut().for_each(|u| u.links.clear());
        }
        Ok(users)
    }

    /// One user by name.
    pub fn user(&self, by: &Principal, name: &str) -> Result<view::UserView, ControlError> {
        self.users(by)?
            .into_iter()
            .find(|u| u.name == name)
            .ok_or(ControlError::NotFound("user"))
    }

    /// The newest `n` audit entries, newest last (`read_only`: they hold
    /// token ids, never tokens or secrets).
    pub fn recent_audit(
        &self,
        by: &Principal,
        n: usize,
    ) -> Result<Vec<serde_json::Value>, ControlError> {
        by.require(Role::ReadOnly)?;
        Ok(self.audit.recent(n))
    }

    /// The proxy's counters (`read_only`).
    pub fn stats(&self, by: &Principal) -> Result<serde_json::Value, ControlError> {
        by.require(Role::ReadOnly)?;
        Ok(self.view()?.stats())
    }

    /// Appends to the audit trail (a failure to write is logged, not fatal).
    pub fn record(&self, r: &audit::Record) {
        if let Err(e) = self.audit.append(r) {
            tracing::error!(error = %e, action = %r.action, "the audit trail could not be written");
        }
    }

    /// The record of `by` doing `action` on `target`, with `result` (and,
    /// when it was done, the thing before and after).
    pub(crate) fn change_record<T>(
        &self,
        by: &Principal,
        action: &str,
        target: Option<String>,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
        result: &Result<T, ControlError>,
    ) {
        let done = result.is_ok();
        self.record(&audit::Record {
            action: action.into(),
            actor: Some((by.token_id.clone(), by.role.name().into())),
            from: Some(by.from.to_string()),
            target,
            before: if done { before } else { None },
            after: if done { after } else { None },
            result: match result {
                Ok(_) => "ok".into(),
                Err(e) => format!("refused: {e}"),
            },
        });
    }

    fn act<T>(
        &self,
        by: &Principal,
        action: &str,
        target: Option<String>,
        after: Option<serde_json::Value>,
        result: &Result<T, ControlError>,
    ) {
        self.change_record(by, action, target, None, after, result);
    }

    /// Who `bearer` is (a session token or a token), asking from `ip`.
    pub fn authenticate(&self, bearer: Option<&str>, ip: IpAddr) -> Result<Principal, AuthError> {
        let at = now();
        if !self.failures.allowed(ip, at) {
            return Err(AuthError::Limited);
        }
        let found = bearer.and_then(|b| {
            if b.starts_with(auth::SESSION_PREFIX) {
                self.sessions.check(b, ip, at)
            } else {
                self.tokens.authenticate(b, ip, at).ok()
            }
        });
        found.ok_or_else(|| {
            self.failures.failed(ip, at);
            self.record(&audit::Record {
                action: "login.failed".into(),
                from: Some(ip.to_string()),
                result: if bearer.is_some() {
                    "refused: unknown, expired or out-of-network bearer".into()
                } else {
                    "refused: no bearer".into()
                },
                ..Default::default()
            });
            AuthError::Refused
        })
    }

    /// Opens a sign-in session for `p` (who authenticated with a token).
    pub fn sign_in(&self, p: &Principal) -> Result<(String, u64), ControlError> {
        let r = if p.session {
            Err(ControlError::Invalid(
                "sign in with a token, not a session".into(),
            ))
        } else {
            Ok(self.sessions.open(p, now()))
        };
        self.act(p, "login", Some(p.token_id.clone()), None, &r);
        r
    }

    /// Ends session `token` of `p`.
    pub fn sign_out(&self, p: &Principal, token: &str) -> Result<(), ControlError> {
        let r = if p.session && self.sessions.close(token) {
            Ok(())
        } else {
            Err(ControlError::Refused(
                "signing out takes the session's own bearer".into(),
            ))
        };
        self.act(p, "logout", Some(p.token_id.clone()), None, &r);
        r
    }

    /// Refuses `action` to `by`, who lacks `need`, and records the refusal
    /// (for a front end that checks the role before reading a request body).
    pub fn deny(&self, by: &Principal, action: &str, need: Role) -> ControlError {
        self.act(
            by,
            action,
            None,
            None,
            &Err::<(), _>(ControlError::Forbidden { need }),
        );
        ControlError::Forbidden { need }
    }

    /// The tokens (`superuser`).
    pub fn list_tokens(&self, by: &Principal) -> Result<Vec<tokens::TokenRecord>, ControlError> {
        by.require(Role::Superuser)?;
        Ok(self.tokens.list())
    }

    /// Creates a token (`superuser`): its record and the token, shown once.
    pub fn create_token(
        &self,
        by: &Principal,
        new: tokens::NewToken,
    ) -> Result<(tokens::TokenRecord, String), ControlError> {
        let after = serde_json::json!({
            "name": new.name,
            "role": new.role.map(Role::name),
            "expires": new.expires,
            "from": new.from.iter().map(ToString::to_string).collect::<Vec<_>>(),
        });
        let r = by
            .require(Role::Superuser)
            .and_then(|()| self.tokens.create(new));
        let target = r.as_ref().ok().map(|(rec, _)| rec.id.clone());
        self.act(by, "token.create", target, Some(after), &r);
        if r.is_ok() {
            self.announce(sync::Managed::Tokens, &self.tokens.records());
        }
        r
    }

    /// Revokes a token and ends its sessions (`superuser`).
    pub fn revoke_token(
        &self,
        by: &Principal,
        id: &str,
    ) -> Result<tokens::TokenRecord, ControlError> {
        let r = by
            .require(Role::Superuser)
            .and_then(|()| self.tokens.revoke(id));
        if r.is_ok() {
            self.sessions.end_of_token(id);
            self.announce(sync::Managed::Tokens, &self.tokens.records());
        }
        let before = r
            .as_ref()
            .ok()
            .map(|g| serde_json::json!({ "name": g.name, "role": g.role.name() }));
        self.change_record(by, "token.revoke", Some(id.to_owned()), before, None, &r);
        r
    }
}
