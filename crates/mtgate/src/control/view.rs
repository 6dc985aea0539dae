//! What the control plane reads of the running proxy, behind one narrow
//! trait the service implements over the runtime it already holds: the
//! users as the running configuration has them, their live usage, and the
//! proxy's counters. The API never reaches into the session path.

use serde_json::Value;

/// One user as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub modes: Vec<&'static str>,
    /// Bytes relayed (up: to Telegram) and connections open now.
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub connections: u64,
    /// `tg://` links, best first: they hold the secret (`standard` and up).
    pub links: Vec<String>,
}

/// The running proxy, read-only.
pub trait View: Send + Sync {
    fn users(&self) -> Vec<UserView>;
    /// The proxy's counters (connections, blocks, quotas).
    fn stats(&self) -> Value;
}
