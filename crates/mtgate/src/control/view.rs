//! What the control plane reads of the running proxy, behind one narrow
//! trait the service implements over the runtime it already holds: the
//! users as the running configuration has them, their live usage, and the
//! proxy's counters. The API never reaches into the session path.

use serde_json::Value;

/// Where a user is defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The config file (or the generated default user): changed there.
    Config,
    /// Managed through the control plane (`state_dir/users.json`).
    Api,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Api => "api",
        }
    }
}

/// One user as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub modes: Vec<&'static str>,
    pub source: Source,
    /// May connect (`limits.enabled`).
    pub enabled: bool,
    /// Bytes relayed (up: to Telegram) and connections open now.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub connections: u64,
    /// `tg://` links, best first: they hold the secret (`standard` and up).
    pub links: Vec<String>,
}

/// One secret of a user as the API shows it (by id, never itself but in
/// its links).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretView {
    pub id: String,
    /// Unix seconds; `None`: open.
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    /// `in_force`, `upcoming` or `run_out`, now.
    pub state: &'static str,
    /// Whether links name it now (the newest in force).
    pub current: bool,
    pub links: Vec<String>,
}

/// The running proxy, read-only.
pub trait View: Send + Sync {
    fn users(&self) -> Vec<UserView>;
    /// The secrets of user `name` (`None`: no such user).
    fn secrets(&self, name: &str) -> Option<Vec<SecretView>>;
    /// A user's usage toward its quotas, as JSON (`None`: no such user).
    fn quota(&self, name: &str) -> Option<serde_json::Value>;
    /// Every end ahead or past: `(user, secret id or None for the user
    /// itself, the first second it is refused)`, Unix seconds.
    fn ends(&self) -> Vec<(String, Option<String>, u64)>;
    /// Every secret in use: `(id, not_before)` (0: no start), for its age.
    fn secret_starts(&self) -> Vec<(String, u64)>;
    /// The config file's ACL rules.
    fn config_rules(&self) -> Vec<super::rules::RuleView>;
    /// The sources blocked by their reputation now and the ends (Unix ms).
    fn blocks(&self, max: usize) -> Vec<(std::net::IpAddr, i64)>;
    /// The modes a user gets when it names none (`server.default_modes`).
    fn default_modes(&self) -> crate::config::Modes;
    /// The proxy's counters (connections, blocks, quotas).
    fn stats(&self) -> Value;
}
