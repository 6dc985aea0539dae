//! Middle-proxy (ME) figures for `/metrics`, read at scrape time from the ME
//! services alive in this process ([`crate::me::stats::live`]): ready links
//! per DC, link failures by stage, lost links, and the HTTPS fetcher's
//! failures, certificate pin mismatches and last success. Nothing is exported
//! while `[me]` is off. Labels are bounded: `dc` comes from Telegram's files,
//! `stage` is `connect` or `handshake`. The list is in docs/metrics.md.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::collections::BTreeMap;

/// The ME collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct MeCollector;

impl Collector for MeCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = crate::me::stats::live();
        if live.is_empty() {
            return Ok(());
        }
        let sum = |f: fn(&crate::me::stats::MeStats) -> u64| live.iter().map(f).sum::<u64>();
        let mut ready: BTreeMap<i16, usize> = BTreeMap::new();
        for s in &live {
            for (dc, n) in &s.ready_by_dc {
                *ready.entry(*dc).or_default() += n;
            }
        }
        {
            let g = ConstGauge::new(0i64);
            let mut m = enc.encode_descriptor(
                "me_connections_ready",
                "Middle-end links ready now, per DC of Telegram's proxy-multi.conf",
                None,
                g.metric_type(),
            )?;
            for (dc, n) in ready {
                let labels = [("dc", dc.to_string())];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let c = ConstCounter::new(0u64);
            let mut m = enc.encode_descriptor(
                "me_link_failures",
                "Middle-end connection attempts that failed, by stage (connect: TCP/resolve; handshake: nonce, keys, RPC handshake, set-up timeout)",
                None,
                c.metric_type(),
            )?;
            for (stage, n) in [
                ("connect", sum(|s| s.connect_failures)),
                ("handshake", sum(|s| s.handshake_failures)),
            ] {
                ConstCounter::new(n).encode(m.encode_family(&[("stage", stage)])?)?;
            }
        }
        put(
            &mut enc,
            "me_links_lost",
            "Ready middle-end links that were lost (their clients were closed)",
            ConstCounter::new(sum(|s| s.lost)),
        )?;
        if !live.iter().any(|s| s.fetching) {
            return Ok(());
        }
        put(
            &mut enc,
            "me_fetch_failures",
            "proxy-secret / proxy-multi.conf downloads that failed (network, TLS, status, size, content)",
            ConstCounter::new(sum(|s| s.fetch_failures)),
        )?;
        put(
            &mut enc,
            "me_fetch_pin_mismatches",
            "Certificates of the download host that matched no configured pin",
            ConstCounter::new(sum(|s| s.pin_mismatches)),
        )?;
        if let Some(t) = live.iter().filter_map(|s| s.last_fetch_ok).max() {
            put(
                &mut enc,
                "me_fetch_last_success_timestamp_seconds",
                "Unix time of the last refresh in which every file was fetched and valid",
                ConstGauge::new(t as i64),
            )?;
        }
        Ok(())
    }
}

fn put<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: M,
) -> Result<(), std::fmt::Error> {
    let me = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(me)
}
