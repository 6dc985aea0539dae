//! `[users.NAME.limits]`: per-user limits, quotas and bandwidth, as written and typed.

use super::ConfigError;
use serde::Deserialize;

/// `[users.NAME.limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserLimits {}

/// A user's limits, typed. The default is "no limits, enabled".
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UserLimits {}

impl UserLimits {
    /// `key` is the TOML path of the table (`users.NAME.limits`) for errors.
    pub fn from_raw(_key: &str, _raw: Option<RawUserLimits>) -> Result<Self, ConfigError> {
        Ok(Self {})
    }
}
