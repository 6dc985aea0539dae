//! The proxy-to-proxy link's figures for `/metrics` (`crate::link`), read at
//! scrape time, by role (`bridge`, `exit`); a role this node does not play
//! is not exported ([`super::Metrics::set_link`]). Listed in
//! docs/metrics.md.

use crate::link::stats::LinkStats;
use mtgate_proto::link::negotiate::Cipher;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Role {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleDirection {
    role: &'static str,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleCipher {
    role: &'static str,
    cipher: &'static str,
}

/// The roles this node plays, with their counters.
pub type Roles = Vec<(&'static str, Arc<LinkStats>)>;

/// The link collector (registered once in [`super::Metrics::new`]).
#[derive(Debug)]
pub struct LinkCollector {
    pub roles: Arc<OnceLock<Roles>>,
}

type Pick = fn(&LinkStats) -> &AtomicU64;
/// A counter family split by direction: name, help, (direction, counter) × 2.
type Split = (&'static str, &'static str, [(&'static str, Pick); 2]);

impl Collector for LinkCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(roles) = self.roles.get() else {
            return Ok(());
        };
        {
            let mut fam =
                enc.encode_descriptor("link_up", "Links up now, by role", None, MetricType::Gauge)?;
            for (role, s) in roles {
                let v = i64::try_from(s.up.load(Relaxed)).unwrap_or(0);
                ConstGauge::new(v).encode(fam.encode_family(&Role { role })?)?;
            }
        }
        let counters: [(&str, &str, Pick); 7] = [
            ("link_established", "Link handshakes that established a link", |s| &s.established),
            ("link_refused", "Link handshakes refused: on an exit, strangers and wrong tokens (fronted), no common cipher, a clock too far; on a bridge, an exit that did not authenticate or refused", |s| &s.refused),
            ("link_closed", "Links that ended", |s| &s.closed),
            ("link_rekeys", "Key rotations on links, both directions", |s| &s.rekeys),
            ("link_streams", "Sessions carried over links", |s| &s.streams),
            ("link_streams_refused", "Streams the other side refused (bridge: the exit could not reach the DC or was full)", |s| &s.streams_refused),
            ("link_flow_violations", "Frames past a stream's credit (the stream was reset)", |s| &s.violations),
        ];
        for (name, help, pick) in counters {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (role, s) in roles {
                ConstCounter::new(pick(s).load(Relaxed))
                    .encode(fam.encode_family(&Role { role })?)?;
            }
        }
        let split: [Split; 2] = [
            (
                "link_session_bytes",
                "Session bytes carried over links: up (toward the DC), down (toward clients)",
                [("up", |s| &s.bytes_up), ("down", |s| &s.bytes_down)],
            ),
            (
                "link_wire_bytes",
                "Record bytes on the links' wire, in and out (framing, tags and keepalives included)",
                [("in", |s| &s.wire_in), ("out", |s| &s.wire_out)],
            ),
        ];
        for (name, help, parts) in split {
            let mut fam = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (role, s) in roles {
                for (direction, pick) in parts {
                    ConstCounter::new(pick(s).load(Relaxed))
                        .encode(fam.encode_family(&RoleDirection { role, direction })?)?;
                }
            }
        }
        {
            let mut fam = enc.encode_descriptor(
                "link_cipher",
                "Links established, by the cipher chosen",
                None,
                MetricType::Counter,
            )?;
            for (role, s) in roles {
                for (i, c) in Cipher::ALL.iter().enumerate() {
                    ConstCounter::new(s.by_cipher[i].load(Relaxed)).encode(fam.encode_family(
                        &RoleCipher {
                            role,
                            cipher: c.name(),
                        },
                    )?)?;
                }
            }
        }
        Ok(())
    }
}
