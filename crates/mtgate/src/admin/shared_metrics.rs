//! The shared state's figures for `/metrics` (`crate::shared`), read at
//! scrape time; nothing is exported without `[shared]`
//! ([`super::Metrics::set_shared`]). Listed in docs/metrics.md.

use crate::shared::Shared;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Node {
    node: String,
}

/// The shared-state collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct SharedCollector {
    pub shared: Arc<OnceLock<Arc<Shared>>>,
}

impl Collector for SharedCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(s) = self.shared.get() else {
            return Ok(());
        };
        let st = &s.stats;
        {
            let mut fam = enc.encode_descriptor(
                "shared_node",
                "This node's name in the shared state (always 1)",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(fam.encode_family(&Node {
                node: s.config.node.clone(),
            })?)?;
        }
        super::metrics::put(
            &mut enc,
            "shared_up",
            "1 if the shared store answered the last time it was asked, 0 while this node runs on its own state",
            ConstGauge::new(i64::from(s.is_up())),
        )?;
        super::metrics::put(
            &mut enc,
            "shared_nodes",
            "Live nodes at the last sync, this one included (0: not synced yet)",
            ConstGauge::new(i64::try_from(st.nodes.load(Relaxed)).unwrap_or(i64::MAX)),
        )?;
        {
            let mut fam = enc.encode_descriptor(
                "shared_replay_checks",
                "Handshakes checked against the shared replay window, by result: fresh, replay (fronted), error (the store failed; the local cache decided), skipped (the store was down)",
                None,
                MetricType::Counter,
            )?;
            for (result, v) in [
                ("fresh", &st.fresh),
                ("replay", &st.replays),
                ("error", &st.errors),
                ("skipped", &st.skipped),
            ] {
                ConstCounter::new(v.load(Relaxed))
                    .encode(fam.encode_family(&Outcome { result })?)?;
            }
        }
        super::metrics::put(
            &mut enc,
            "shared_reconciled",
            "Handshakes served while the store was down, written to it after",
            ConstCounter::new(st.reconciled.load(Relaxed)),
        )?;
        super::metrics::put(
            &mut enc,
            "shared_pending",
            "Handshakes waiting to be written to the store",
            ConstGauge::new(i64::try_from(s.pending()).unwrap_or(i64::MAX)),
        )?;
        Ok(())
    }
}
