//! Prometheus metrics fed by session events (DESIGN §3 "events, not calls into
//! metrics").
//!
//! [`Metrics`] owns a `prometheus-client` registry; [`MetricsSink`] is the
//! [`EventSink`] that updates it, so the session and relay never name a metrics
//! backend. Process and buffer-pool figures are read at scrape time by a
//! collector. Every label set is bounded: no per-IP labels, the `user` label is
//! one of the configured user names (or `none` before a handshake names one),
//! `dc` is a DC-table index, `reason` and `mode` are closed enums.
//! The full list is in docs/metrics.md.

use crate::dc::{DcTable, UnknownDcRule};
use crate::events::{CloseReason, Event, EventSink};
use mtgate_proto::{ClientMode, RejectReason};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// The `user` label for connections no handshake attributed to a user.
pub const NO_USER: &str = "none";
/// The `mode` label for connections that never finished a handshake.
pub const NO_MODE: &str = "none";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnLabels {
    mode: &'static str,
    user: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AcceptedLabels {
    mode: &'static str,
    user: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    user: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    reason: &'static str,
    /// `enforce` (refused) or `monitor` (would have been refused).
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DcLabels {
    dc: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TargetLabels {
    target: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DcClassLabels {
    dc: String,
    class: &'static str,
}

fn connect_histogram() -> Histogram {
    // 1 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 14))
}

/// Every metric mtgate exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    /// Replaced on reload ([`Metrics::set_users`]).
    users: std::sync::RwLock<HashSet<String>>,
    /// DC indexes that get their own `dc` label value; others are `other`.
    dcs: DcTable,
    active: Gauge,
    connections: Family<ConnLabels, Counter>,
    accepted: Family<AcceptedLabels, Counter>,
    fronted: Family<ReasonLabels, Counter>,
    rejected: Family<ReasonLabels, Counter>,
    bytes: Family<BytesLabels, Counter>,
    connect_seconds: Family<DcLabels, Histogram, fn() -> Histogram>,
    connect_failures: Family<DcClassLabels, Counter>,
    ejections: Family<TargetLabels, Counter>,
    restorations: Family<TargetLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    reload_ok: Gauge,
    conn_cap: Gauge,
    fd_limit: Gauge,
    policy: Family<PolicyLabels, Counter>,
    /// The policy engine, once the runtime exists: live per-user bytes and
    /// the policy's tables are read from it at scrape time.
    policy_src: Arc<std::sync::OnceLock<Arc<crate::policy::engine::Policy>>>,
    /// The fronting budget, once the runtime exists (read at scrape time).
    mask_budget: Arc<std::sync::OnceLock<Arc<crate::front::MaskBudget>>>,
    site: Arc<std::sync::OnceLock<Arc<crate::web::Site>>>,
    shared: Arc<std::sync::OnceLock<Arc<crate::shared::Shared>>>,
    link: Arc<std::sync::OnceLock<super::link_metrics::Roles>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("users", &self.users.read().map(|u| u.len()).unwrap_or(0))
            .finish()
    }
}

impl Metrics {
    /// Builds the registry for these configured user names (the only values
    /// the `user` label takes besides `none`).
    pub fn new<'a>(users: impl IntoIterator<Item = &'a str>) -> Self {
        let mut registry = Registry::with_prefix("mtgate");
        let m = Self {
            registry: Registry::default(),
            users: std::sync::RwLock::new(users.into_iter().map(str::to_owned).collect()),
            dcs: DcTable::telegram_defaults(UnknownDcRule::Close),
            active: Gauge::default(),
            connections: Family::default(),
            accepted: Family::default(),
            fronted: Family::default(),
            rejected: Family::default(),
            bytes: Family::default(),
            connect_seconds: Family::new_with_constructor(connect_histogram),
            connect_failures: Family::default(),
            ejections: Family::default(),
            restorations: Family::default(),
            reloads: Family::default(),
            reload_ok: Gauge::default(),
            conn_cap: Gauge::default(),
            fd_limit: Gauge::default(),
            policy: Family::default(),
            policy_src: Arc::default(),
            mask_budget: Arc::default(),
            site: Arc::default(),
            shared: Arc::default(),
            link: Arc::default(),
        };
        registry.register(
            "connections_max",
            "Client connections accepted at once at most: server.max_connections, lowered to what the fd limit carries",
            m.conn_cap.clone(),
        );
        registry.register(
            "fd_limit",
            "The process's soft RLIMIT_NOFILE after raising it to the hard limit (-1: unlimited)",
            m.fd_limit.clone(),
        );
        registry.register(
            "connections_active",
            "Client connections open now",
            m.active.clone(),
        );
        registry.register(
            "connections",
            "Client connections closed, by client mode, user and close reason",
            m.connections.clone(),
        );
        registry.register(
            "handshakes_accepted",
            "Handshakes accepted, by client mode and user",
            m.accepted.clone(),
        );
        registry.register(
            "handshakes_fronted",
            "Connections handed to the mask site (or held past the fronting budget), by cause: a reject reason, handshake_timeout, handshake_eof or a policy reason",
            m.fronted.clone(),
        );
        registry.register(
            "handshakes_rejected",
            "Handshakes rejected (fronted or closed), by reject reason",
            m.rejected.clone(),
        );
        registry.register_collector(Box::new(PolicyCollector {
            policy: m.policy_src.clone(),
            bytes_at_close: m.bytes.clone(),
        }));
        registry.register(
            "upstream_connect_seconds",
            "Time to connect to a DC, by DC index",
            m.connect_seconds.clone(),
        );
        registry.register(
            "upstream_connect_failures",
            "Failed connects to a DC address, by DC index and failure class (refused, timeout, reset, unreachable, dns, tls, protocol, local)",
            m.connect_failures.clone(),
        );
        registry.register(
            "upstream_target_ejections",
            "DC targets taken out of service by their circuit breaker, by target (ip:port)",
            m.ejections.clone(),
        );
        registry.register(
            "upstream_target_restorations",
            "DC targets put back in service (a trial connection or an active check passed), by target",
            m.restorations.clone(),
        );
        registry.register(
            "config_reloads",
            "Configuration reloads, by result (ok, error)",
            m.reloads.clone(),
        );
        registry.register(
            "config_last_reload_successful",
            "1 if the last reload applied (or none was tried), 0 if it was refused",
            m.reload_ok.clone(),
        );
        registry.register(
            "policy_refusals",
            "Connections refused by the security policy (mode=enforce) or that would have been (mode=monitor), by reason",
            m.policy.clone(),
        );
        registry.register(
            "build",
            "Build information",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        registry.register_collector(Box::new(ProcessCollector));
        registry.register_collector(Box::new(super::me_metrics::MeCollector));
        registry.register_collector(Box::new(super::front_metrics::FrontCollector {
            budget: m.mask_budget.clone(),
        }));
        registry.register_collector(Box::new(super::site_metrics::SiteCollector {
            site: m.site.clone(),
        }));
        registry.register_collector(Box::new(super::shared_metrics::SharedCollector {
            shared: m.shared.clone(),
        }));
        registry.register_collector(Box::new(super::link_metrics::LinkCollector {
            roles: m.link.clone(),
        }));
        // Known label sets start at zero so rates and dashboards see them at once.
        for r in RejectReason::ALL {
            let l = ReasonLabels { reason: r.name() };
            let _ = m.rejected.get_or_create(&l);
            let _ = m.fronted.get_or_create(&l);
        }
        m.reload_ok.set(1);
        for result in ["ok", "error"] {
            let _ = m.reloads.get_or_create(&ResultLabels { result });
        }
        for r in crate::policy::PolicyReason::ALL {
            for mode in ["enforce", "monitor"] {
                let _ = m.policy.get_or_create(&PolicyLabels {
                    reason: r.label(),
                    mode,
                });
            }
        }
        m.zero_user_bytes();
        Self { registry, ..m }
    }

    fn zero_user_bytes(&self) {
        let users = self.users.read().unwrap_or_else(|p| p.into_inner());
        for u in users.iter() {
            for direction in ["up", "down"] {
                let _ = self.bytes.get_or_create(&BytesLabels {
                    user: u.clone(),
                    direction,
                });
            }
        }
    }

    /// The configured users changed (reload): new names get their own `user`
    /// label; series of removed users stay (counters never go back).
    pub fn set_users<'a>(&self, users: impl IntoIterator<Item = &'a str>) {
        {
            let mut set = self.users.write().unwrap_or_else(|p| p.into_inner());
            set.extend(users.into_iter().map(str::to_owned));
        }
        self.zero_user_bytes();
    }

    /// Uses the configured DC table for the `dc` label (default: Telegram's
    /// DCs 1..5 and 203). A client can name any DC index (ME mode reports it),
    /// so indexes outside the table share the value `other`.
    pub fn with_dc_table(mut self, dcs: &DcTable) -> Self {
        self.dcs = dcs.clone();
        self
    }

    fn dc_label(&self, dc: u16) -> DcLabels {
        DcLabels {
            dc: if self.dcs.has(dc) {
                dc.to_string()
            } else {
                "other".to_owned()
            },
        }
    }

    /// The `user` label value for a user name from an event.
    fn user_label(&self, user: Option<&str>) -> String {
        let known = user.is_some_and(|u| {
            self.users
                .read()
                .map(|set| set.contains(u))
                .unwrap_or(false)
        });
        match user {
            Some(u) if known => u.to_owned(),
            Some(_) => "other".to_owned(),
            None => NO_USER.to_owned(),
        }
    }

    /// Attaches the policy engine (once): `mtgate_bytes_total` then counts live
    /// (from the users' metered usage) instead of at connection close, and the
    /// policy's gauges appear.
    pub fn set_policy(&self, policy: Arc<crate::policy::engine::Policy>) {
        let _ = self.policy_src.set(policy);
    }

    /// The connection cap in force and the descriptor limit behind it.
    pub fn set_limits(&self, cap: usize, fd_soft: Option<u64>) {
        self.conn_cap.set(i64::try_from(cap).unwrap_or(i64::MAX));
        self.fd_limit
            .set(fd_soft.map_or(-1, |v| i64::try_from(v).unwrap_or(-1)));
    }

    /// Attaches the fronting budget (once): the `mtgate_mask_*` figures appear.
    pub fn set_mask_budget(&self, budget: Arc<crate::front::MaskBudget>) {
        let _ = self.mask_budget.set(budget);
    }

    /// Attaches the own site (once): `mtgate_site_*` and, with the WEB
    /// proxy type on, `mtgate_webproxy_*` appear.
    pub fn set_site(&self, site: Arc<crate::web::Site>) {
        let _ = self.site.set(site);
    }

    /// Attaches the shared state (once): `mtgate_shared_*` appear.
    pub fn set_shared(&self, shared: Arc<crate::shared::Shared>) {
        let _ = self.shared.set(shared);
    }

    /// Attaches the link's counters of the roles this node plays (once):
    /// `mtgate_link_*` appear.
    pub fn set_link(&self, config: &crate::link::LinkConfig, stats: &crate::link::Stats) {
        let mut roles = Vec::new();
        if config.bridge.is_some() {
            roles.push(("bridge", stats.bridge.clone()));
        }
        if config.exit.is_some() {
            roles.push(("exit", stats.exit.clone()));
        }
        if !roles.is_empty() {
            let _ = self.link.set(roles);
        }
    }

    /// The whole exposition in the OpenMetrics text format (ends with `# EOF`).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::with_capacity(8192);
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn on_event(&self, e: &Event<'_>) {
        match e {
            Event::Opened { .. } => {
                self.active.inc();
            }
            Event::Authenticated { user, mode, .. } => {
                self.accepted
                    .get_or_create(&AcceptedLabels {
                        mode: mode.name(),
                        user: self.user_label(Some(user)),
                    })
                    .inc();
            }
            Event::UpstreamConnected { dc, took, .. } => {
                self.connect_seconds
                    .get_or_create(&self.dc_label(*dc))
                    .observe(took.as_secs_f64());
            }
            Event::UpstreamFailed { dc, class, .. } => {
                self.connect_failures
                    .get_or_create(&DcClassLabels {
                        dc: self.dc_label(*dc).dc,
                        class: class.label(),
                    })
                    .inc();
            }
            Event::TargetEjected { target, .. } => {
                self.ejections
                    .get_or_create(&TargetLabels {
                        target: target.to_string(),
                    })
                    .inc();
            }
            // Links are counted by their own collector (crate::link::stats).
            Event::Link(_) => {}
            Event::TargetRestored { target } => {
                self.restorations
                    .get_or_create(&TargetLabels {
                        target: target.to_string(),
                    })
                    .inc();
            }
            Event::Fronted { cause, .. } => {
                self.fronted
                    .get_or_create(&ReasonLabels {
                        reason: cause.label(),
                    })
                    .inc();
            }
            Event::Reloaded { ok, .. } => {
                let result = if *ok { "ok" } else { "error" };
                self.reloads.get_or_create(&ResultLabels { result }).inc();
                self.reload_ok.set(i64::from(*ok));
            }
            Event::PolicyHit {
                reason, enforced, ..
            } => {
                self.policy
                    .get_or_create(&PolicyLabels {
                        reason: reason.label(),
                        mode: if *enforced { "enforce" } else { "monitor" },
                    })
                    .inc();
            }
            Event::Closed {
                user,
                mode,
                reason,
                up,
                down,
                ..
            } => self.on_closed(*user, *mode, *reason, *up, *down),
        }
    }

    fn on_closed(
        &self,
        user: Option<&str>,
        mode: Option<ClientMode>,
        reason: CloseReason,
        up: u64,
        down: u64,
    ) {
        self.active.dec();
        let user = self.user_label(user);
        if let CloseReason::Rejected(r) = reason {
            self.rejected
                .get_or_create(&ReasonLabels { reason: r.name() })
                .inc();
        }
        if up > 0 || down > 0 || user != NO_USER {
            for (direction, n) in [("up", up), ("down", down)] {
                self.bytes
                    .get_or_create(&BytesLabels {
                        user: user.clone(),
                        direction,
                    })
                    .inc_by(n);
            }
        }
        self.connections
            .get_or_create(&ConnLabels {
                mode: mode.map(ClientMode::name).unwrap_or(NO_MODE),
                user,
                reason: reason.label(),
            })
            .inc();
    }
}

/// The [`EventSink`] that keeps [`Metrics`] current.
#[derive(Clone, Debug)]
pub struct MetricsSink(pub Arc<Metrics>);

impl EventSink for MetricsSink {
    fn emit(&self, e: &Event<'_>) {
        self.0.on_event(e);
    }
}

/// Figures read at scrape time: the buffer pool and the process itself.
#[derive(Debug)]
struct ProcessCollector;

fn open_fds() -> Option<i64> {
    std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as i64)
}

fn resident_bytes() -> Option<i64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(super) fn put<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    m: M,
) -> Result<(), std::fmt::Error> {
    let me = enc.encode_descriptor(name, help, None, m.metric_type())?;
    m.encode(me)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::pool::{stats, Class};
        let per_class = |enc: &mut DescriptorEncoder,
                         name: &str,
                         help: &str,
                         counter: bool,
                         f: &dyn Fn(&crate::pool::PoolStats, Class) -> u64|
         -> Result<(), std::fmt::Error> {
            let ty = if counter {
                ConstCounter::new(0u64).metric_type()
            } else {
                ConstGauge::new(0i64).metric_type()
            };
            let mut m = enc.encode_descriptor(name, help, None, ty)?;
            for c in Class::ALL {
                let v = f(stats(c), c);
                let labels = [("class", c.name())];
                let fam = m.encode_family(&labels)?;
                if counter {
                    ConstCounter::new(v).encode(fam)?;
                } else {
                    ConstGauge::new(v as i64).encode(fam)?;
                }
            }
            Ok(())
        };
        per_class(
            &mut enc,
            "pool_hits",
            "Relay buffers taken from a free list, by size class",
            true,
            &|s, _| s.hits.load(Relaxed),
        )?;
        per_class(
            &mut enc,
            "pool_misses",
            "Relay buffers newly allocated, by size class",
            true,
            &|s, _| s.misses.load(Relaxed),
        )?;
        per_class(
            &mut enc,
            "pool_buffers_in_use",
            "Relay buffers holding in-flight data now, by size class",
            false,
            &|s, _| s.in_use.load(Relaxed) as u64,
        )?;
        per_class(
            &mut enc,
            "pool_buffers_cached",
            "Relay buffers kept in the per-thread free lists now, by size class",
            false,
            &|s, _| s.cached.load(Relaxed) as u64,
        )?;
        per_class(
            &mut enc,
            "pool_buffer_size_bytes",
            "Bytes per relay buffer of each size class",
            false,
            &|_, c| c.size() as u64,
        )?;
        if let Some(n) = open_fds() {
            put(
                &mut enc,
                "process_open_fds",
                "Open file descriptors",
                ConstGauge::new(n),
            )?;
        }
        if let Some(n) = resident_bytes() {
            put(
                &mut enc,
                "process_resident_memory_bytes",
                "Resident set size",
                ConstGauge::new(n),
            )?;
        }
        let hsm = crate::hsm::health();
        put(
            &mut enc,
            "hsm_digest_failures",
            "Handshake digests the HSM failed to compute (digest mode; their clients were fronted)",
            ConstCounter::new(hsm.failures),
        )?;
        Ok(())
    }
}

/// The policy's figures, read at scrape time: per-user bytes (live), the
/// per-source table, active blocks, users over quota.
#[derive(Debug)]
struct PolicyCollector {
    policy: Arc<std::sync::OnceLock<Arc<crate::policy::engine::Policy>>>,
    bytes_at_close: Family<BytesLabels, Counter>,
}

const BYTES_HELP: &str =
    "Client payload bytes relayed, by user and direction (up = client to Telegram)";

impl Collector for PolicyCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = self.policy.get() else {
            // No policy engine attached: bytes as counted at connection close.
            return put(&mut enc, "bytes", BYTES_HELP, self.bytes_at_close.clone());
        };
        let st = p.stats();
        {
            let mut fam = enc.encode_descriptor(
                "bytes",
                BYTES_HELP,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (user, up, down, _) in &st.per_user {
                for (direction, v) in [("up", *up), ("down", *down)] {
                    let labels = BytesLabels {
                        user: user.to_string(),
                        direction,
                    };
                    ConstCounter::new(v).encode(fam.encode_family(&labels)?)?;
                }
            }
        }
        put(
            &mut enc,
            "policy_sources_tracked",
            "Sources (IPv4 addresses, IPv6 prefixes) in the per-source table",
            ConstGauge::new(st.ips.tracked as i64),
        )?;
        put(
            &mut enc,
            "policy_blocks_active",
            "Sources blocked now by their reputation",
            ConstGauge::new(st.ips.active_blocks as i64),
        )?;
        put(
            &mut enc,
            "policy_blocks",
            "Reputation blocks imposed",
            ConstCounter::new(st.ips.blocks_total),
        )?;
        put(
            &mut enc,
            "policy_evictions",
            "Per-source entries evicted to keep the table under its cap",
            ConstCounter::new(st.ips.evictions),
        )?;
        put(
            &mut enc,
            "policy_collateral",
            "Valid handshakes from sources that were refused or marked suspect since their previous valid one: the per-source limits' false positives",
            ConstCounter::new(st.ips.collateral),
        )?;
        put(
            &mut enc,
            "policy_suspect_admissions",
            "Connections read although their source was over its rate, failures or reputation (policy.rate.scope = unauthenticated)",
            ConstCounter::new(st.ips.suspects),
        )?;
        put(
            &mut enc,
            "policy_users_over_quota",
            "Users whose data quota is used up now",
            ConstGauge::new(st.users_over_quota as i64),
        )?;
        Ok(())
    }
}
