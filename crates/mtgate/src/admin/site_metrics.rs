//! The own site's certificate for `/metrics` (`crate::web`), read at scrape
//! time: when the earliest certificate expires, and whether it is
//! self-signed. Nothing is exported without a site
//! ([`super::Metrics::set_site_certs`]). Listed in docs/metrics.md.

use crate::web::certs::CertStore;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::{Arc, OnceLock};

/// The site collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct SiteCollector {
    pub certs: Arc<OnceLock<Arc<CertStore>>>,
}

impl Collector for SiteCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(c) = self.certs.get() else {
            return Ok(());
        };
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
