//! The fronting gate's figures for `/metrics` (`crate::front`), read at
//! scrape time: mask connections open and held now, the budget, and how many
//! connections met the budget. Nothing is exported until a runtime attached
//! its budget ([`super::Metrics::set_mask_budget`]). Listed in docs/metrics.md.

use crate::front::MaskBudget;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, OnceLock};

/// The gate collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct FrontCollector {
    pub budget: Arc<OnceLock<Arc<MaskBudget>>>,
}

impl Collector for FrontCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(b) = self.budget.get() else {
            return Ok(());
        };
        let st = b.stats();
        super::metrics::put(
            &mut enc,
            "mask_connections_open",
            "Connections to the mask site open now (fronted handshakes, replays, policy refusals, pre-connects)",
            ConstGauge::new(st.open as i64),
        )?;
        super::metrics::put(
            &mut enc,
            "mask_connections_held",
            "Connections held silent now because the fronting budget was spent",
            ConstGauge::new(st.held as i64),
        )?;
        super::metrics::put(
            &mut enc,
            "mask_budget_connections",
            "The fronting budget: mask connections allowed open at once (tls.mask_budget)",
            ConstGauge::new(st.budget as i64),
        )?;
        super::metrics::put(
            &mut enc,
            "mask_over_budget",
            "Connections that met the fronting budget (global or per source) and were held instead",
            ConstCounter::new(st.over_budget),
        )?;
        super::metrics::put(
            &mut enc,
            "mask_connections_peak",
            "The most mask connections open at once since start",
            ConstGauge::new(st.peak as i64),
        )
    }
}
