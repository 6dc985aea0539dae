//! Security policy: who may connect, how often, how much (issue 7).
//!
//! Layers, each a pure table behind a narrow interface, fed the time by a
//! [`clock::Clock`] so tests can move it:
//!
//! * [`acl`]: CIDR rules (prefix trie) with levels and time windows, FireHOL lists;
//! * [`iptable`]: the bounded per-source table: GCRA connection rate, concurrent
//!   connections, handshake failures, reputation and blocks;
//! * [`geo`]: country allow/deny from a MaxMind database;
//! * [`users`]: per-user limits, quotas (lifetime and calendar) and bandwidth;
//! * [`persist`]: the state file (atomic writes) that carries usage, blocks and
//!   reputation across reloads and restarts.
//!
//! Every policy runs in [`Mode::Monitor`] (log and count only) or [`Mode::Enforce`].

pub mod acl;
pub mod clock;
pub mod error;
pub mod geo;
pub mod iptable;

/// Whether a policy only reports what it would do, or does it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Log and count what would be refused; refuse nothing.
    Monitor,
    /// Refuse.
    #[default]
    Enforce,
}
