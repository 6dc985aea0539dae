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
pub mod bandwidth;
pub mod clock;
pub mod engine;
pub mod error;
pub mod geo;
pub mod iptable;
pub mod persist;
pub mod quota;
pub mod users;

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

/// Why a policy refused a connection (a bounded set: metric labels).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyReason {
    /// An ACL rule says `blocked` (now).
    AclBlocked,
    /// The country is not allowed.
    GeoBlocked,
    /// Too many new connections per second from this source.
    RateLimited,
    /// Too many concurrent connections from this source.
    TooManyConnections,
    /// Too many failed handshakes from this source within the window.
    TooManyFailures,
    /// The source's reputation fell past the threshold; it is blocked for a while.
    ReputationBlocked,
    /// The user is disabled.
    UserDisabled,
    /// The user's expiry time has passed.
    UserExpired,
    /// The user has too many concurrent connections.
    UserConnections,
    /// The user was seen from too many distinct addresses within the window.
    UserIps,
    /// The user's data quota is used up.
    UserQuota,
}

impl PolicyReason {
    /// A refusal for volume (rate, connections, failures, reputation), not
    /// for who the source is: `policy.flood_action` applies, and a fronted
    /// one shares a suspect's fronting budget.
    pub fn is_flood(self) -> bool {
        matches!(
            self,
            Self::RateLimited
                | Self::TooManyConnections
                | Self::TooManyFailures
                | Self::ReputationBlocked
        )
    }

    pub const ALL: [PolicyReason; 11] = [
        Self::AclBlocked,
        Self::GeoBlocked,
        Self::RateLimited,
        Self::TooManyConnections,
        Self::TooManyFailures,
        Self::ReputationBlocked,
        Self::UserDisabled,
        Self::UserExpired,
        Self::UserConnections,
        Self::UserIps,
        Self::UserQuota,
    ];

    /// A short label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            Self::AclBlocked => "acl_blocked",
            Self::GeoBlocked => "geo_blocked",
            Self::RateLimited => "rate_limited",
            Self::TooManyConnections => "too_many_connections",
            Self::TooManyFailures => "too_many_failures",
            Self::ReputationBlocked => "reputation_blocked",
            Self::UserDisabled => "user_disabled",
            Self::UserExpired => "user_expired",
            Self::UserConnections => "user_connections",
            Self::UserIps => "user_ips",
            Self::UserQuota => "user_quota",
        }
    }
}
