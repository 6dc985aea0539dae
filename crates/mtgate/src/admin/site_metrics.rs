//! The own site's certificate for `/metrics` (`crate::web`), read at scrape
//! time: when the earliest certificate expires, and whether it is
//! self-signed. Nothing is exported without a site
//! ([`super::Metrics::set_site_certs`]). Listed in docs/metrics.md.

use crate::web::Site;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Carrier {
    carrier: &'static str,
}

/// The site collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct SiteCollector {
    pub site: Arc<OnceLock<Arc<Site>>>,
}

impl Collector for SiteCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(site) = self.site.get() else {
            return Ok(());
        };
        if let Some(w) = site.webproxy_stats() {
            use std::sync::atomic::Ordering::Relaxed;
            super::metrics::put(
                &mut enc,
                "webproxy_sessions",
                "WEB proxy sessions open now",
                ConstGauge::new(i64::try_from(site.webproxy_sessions()).unwrap_or(i64::MAX)),
            )?;
            {
                let mut fam = enc.encode_descriptor(
                    "webproxy_streams_refused",
                    "WEB proxy streams refused, by reason: over max_streams, a reused id, data past the stream's credit",
                    None,
                    prometheus_client::metrics::MetricType::Counter,
                )?;
                for (reason, v) in crate::web::webproxy::REFUSAL_REASONS
                    .iter()
                    .zip(&w.streams_refused)
                {
                    ConstCounter::new(v.load(Relaxed))
                        .encode(fam.encode_family(&Reason { reason })?)?;
                }
            }
            if let Some(carrier) = site.webproxy_carrier() {
                let mut fam = enc.encode_descriptor(
                    "webproxy_carrier",
                    "The WEB proxy carrier in use (1 for the configured one)",
                    None,
                    prometheus_client::metrics::MetricType::Gauge,
                )?;
                ConstGauge::new(1i64).encode(fam.encode_family(&Carrier { carrier })?)?;
            }
            super::metrics::put(
                &mut enc,
                "webproxy_streams",
                "WEB proxy streams (app connections) open now",
                ConstGauge::new(i64::try_from(w.streams_open.load(Relaxed)).unwrap_or(i64::MAX)),
            )?;
            for (name, help, v) in [
                (
                    "webproxy_sessions_opened",
                    "WEB proxy sessions opened since start",
                    &w.sessions_opened,
                ),
                (
                    "webproxy_streams_opened",
                    "WEB proxy streams (app connections) opened since start",
                    &w.streams_opened,
                ),
                (
                    "webproxy_sessions_refused",
                    "WEB proxy session creations refused at capacity (503)",
                    &w.full,
                ),
                (
                    "webproxy_bytes_up",
                    "Bytes the apps sent over WEB proxy streams",
                    &w.bytes_up,
                ),
                (
                    "webproxy_bytes_down",
                    "Bytes sent to the apps over WEB proxy streams",
                    &w.bytes_down,
                ),
            ] {
                super::metrics::put(&mut enc, name, help, ConstCounter::new(v.load(Relaxed)))?;
            }
        }
        let c = site.certs();
        let current = c.current();
        let Some(first) = current.iter().min_by_key(|l| l.not_after) else {
            return Ok(());
        };
        super::metrics::put(
            &mut enc,
            "site_certificate_expiry_seconds",
            "When the own site's certificate expires (notAfter, Unix seconds; the earliest if several)",
            ConstGauge::new(first.not_after),
        )?;
        super::metrics::put(
            &mut enc,
            "site_certificate_self_signed",
            "1 when the own site serves a self-signed certificate (no [site] cert, key or ACME)",
            ConstGauge::new(i64::from(first.self_signed)),
        )?;
        let r = c.renewal();
        super::metrics::put(
            &mut enc,
            "site_acme_issued",
            "Certificates obtained over ACME since start",
            ConstCounter::new(r.issued),
        )?;
        super::metrics::put(
            &mut enc,
            "site_acme_failures",
            "Failed ACME attempts since start (the reason is logged; the current certificate stays)",
            ConstCounter::new(r.failures),
        )
    }
}
