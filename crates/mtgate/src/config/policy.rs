//! `[policy]`: the IP-side policies (ACL, rate limits, reputation, geo) as
//! written (`Raw*`, unknown keys refused) and typed.

use super::ConfigError;
use serde::Deserialize;

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {}

/// `[policy]`, typed.
#[derive(Clone, Debug, Default)]
pub struct PolicyConfig {}

impl PolicyConfig {
    pub fn from_raw(_raw: RawPolicy) -> Result<Self, ConfigError> {
        Ok(Self {})
    }
}
