//! `[tls]` keys of the fronting gate (`crate::front`): how many connections
//! to the mask site may be open at once, in all and per source, and how long
//! a connection past that budget is held silent (the site's own idle timeout).
//! See docs/stealth.md "Flood-safe fronting".

use super::{invalid, ConfigError};
use std::time::Duration;

/// Default concurrent mask connections, in all.
pub const DEFAULT_BUDGET: usize = 512;
/// Default concurrent mask connections from one source (IPv4 address, IPv6 /64).
pub const DEFAULT_BUDGET_PER_SOURCE: usize = 16;
/// Default silent hold: nginx's `client_header_timeout` and
/// `ssl_handshake_timeout`, both 60 s out of the box.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(60);

/// The fronting budget, typed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskBudgetConfig {
    /// `tls.mask_budget`: mask connections open at once, all sources together.
    pub global: usize,
    /// `tls.mask_budget_per_source`: mask connections open at once per source.
    pub per_source: usize,
    /// `tls.mask_hold_timeout`: how long a connection past the budget is held
    /// silent before a FIN (set it to the mask site's idle timeout).
    pub hold: Duration,
}

impl Default for MaskBudgetConfig {
    fn default() -> Self {
        Self {
            global: DEFAULT_BUDGET,
            per_source: DEFAULT_BUDGET_PER_SOURCE,
            hold: DEFAULT_HOLD,
        }
    }
}

impl MaskBudgetConfig {
    /// Checks the raw values; `max_connections` bounds the global budget.
    pub fn from_raw(
        global: Option<usize>,
        per_source: Option<usize>,
        hold: Option<Duration>,
        max_connections: usize,
    ) -> Result<Self, ConfigError> {
        let global = global.unwrap_or(DEFAULT_BUDGET.min(max_connections));
        if global == 0 || global > max_connections {
            return Err(invalid(
                "tls.mask_budget",
                format!("use 1..={max_connections} (server.max_connections)"),
            ));
        }
        let per_source = per_source.unwrap_or(DEFAULT_BUDGET_PER_SOURCE.min(global));
        if per_source == 0 || per_source > global {
            return Err(invalid(
                "tls.mask_budget_per_source",
                format!("use 1..={global} (tls.mask_budget)"),
            ));
        }
        let hold = hold.unwrap_or(DEFAULT_HOLD);
        if hold < Duration::from_secs(1) || hold > Duration::from_secs(3600) {
            return Err(invalid(
                "tls.mask_hold_timeout",
                "use a duration from 1s to 1h (the mask site's idle timeout)",
            ));
        }
        Ok(Self {
            global,
            per_source,
            hold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let d = MaskBudgetConfig::from_raw(None, None, None, 10_000).expect("defaults");
        assert_eq!(d, MaskBudgetConfig::default());
        // A small connection cap bounds the default budget.
        let small = MaskBudgetConfig::from_raw(None, None, None, 8).expect("small");
        assert_eq!((small.global, small.per_source), (8, 8));
        for (g, p, h) in [
            (Some(0), None, None),
            (Some(20_000), None, None),
            (None, Some(0), None),
            (Some(4), Some(5), None),
            (None, None, Some(Duration::from_millis(10))),
            (None, None, Some(Duration::from_secs(7200))),
        ] {
            let e = MaskBudgetConfig::from_raw(g, p, h, 10_000).expect_err("refused");
            assert!(e.to_string().contains("tls.mask_"), "{e}");
        }
    }
}
