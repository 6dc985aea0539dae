//! Session events (DESIGN §3 "events, not calls into metrics").
//!
//! The session emits typed [`Event`]s; subscribers ([`EventSink`]) turn them
//! into logs, counters, and later metrics and audit records. The relay loop
//! never names a logging or metrics backend.

use mtgate_proto::{ClientMode, RejectReason};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

/// Why a session ended: exactly one per connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// The client closed (FIN) after the relay started.
    ClientClosed,
    /// The DC closed first.
    UpstreamClosed,
    /// Read/write error on the client socket.
    ClientError,
    /// Read/write error on the DC socket.
    UpstreamError,
    /// No bytes either way for `idle_timeout`.
    IdleTimeout,
    /// The handshake did not finish within `handshake_timeout`.
    HandshakeTimeout,
    /// The client closed before finishing the handshake.
    HandshakeEof,
    /// Not a valid client (silently closed or fronted).
    Rejected(RejectReason),
    /// The client's DC index maps to no DC and the rule is `close`.
    UnknownDc,
    /// No DC address could be reached.
    UpstreamConnectFailed,
    /// The client spoke and the DC said nothing within the connect timeout.
    UpstreamSilent,
    /// Bad TLS records from the client during the relay.
    ClientProtocol,
    /// The server is shutting down.
    Shutdown,
    /// The user was removed or disabled by a reload (after the grace time).
    Drained,
    /// Refused by the security policy (closed or fronted, never answered).
    Policy(crate::policy::PolicyReason),
    /// The user's data quota ran out during the relay.
    QuotaExhausted,
}

impl CloseReason {
    /// A short label (bounded set, suitable for metrics).
    pub fn label(self) -> &'static str {
        match self {
            Self::ClientClosed => "client_closed",
            Self::UpstreamClosed => "upstream_closed",
            Self::ClientError => "client_error",
            Self::UpstreamError => "upstream_error",
            Self::IdleTimeout => "idle_timeout",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::HandshakeEof => "handshake_eof",
            Self::Rejected(r) => r.name(),
            Self::UnknownDc => "unknown_dc",
            Self::UpstreamConnectFailed => "upstream_connect_failed",
            Self::UpstreamSilent => "upstream_silent",
            Self::ClientProtocol => "client_protocol",
            Self::Shutdown => "shutdown",
            Self::Drained => "drained",
            Self::Policy(r) => r.label(),
            Self::QuotaExhausted => "quota_exhausted",
        }
    }
}

/// Something that happened to a session.
#[derive(Debug)]
pub enum Event<'a> {
    Opened {
        id: u64,
        peer: SocketAddr,
    },
    Authenticated {
        id: u64,
        user: &'a str,
        mode: ClientMode,
        dc: i16,
    },
    UpstreamConnected {
        id: u64,
        dc: u16,
        addr: SocketAddr,
        took: Duration,
    },
    UpstreamFailed {
        id: u64,
        dc: u16,
        /// What kind of failure (a metric label).
        class: crate::net::connect::ErrorClass,
        error: &'a str,
    },
    /// A DC target was taken out of service by its circuit breaker.
    TargetEjected {
        target: &'a crate::net::target::Target,
        /// For how long (until a trial or an active check).
        cooldown: std::time::Duration,
    },
    /// A DC target is back in service (a trial or an active check passed).
    TargetRestored {
        target: &'a crate::net::target::Target,
    },
    /// Handed to the mask site (or held past the fronting budget), by cause:
    /// a rejected handshake, the handshake deadline, a client that closed
    /// before it decided, or a policy refusal.
    Fronted {
        id: u64,
        cause: CloseReason,
    },
    /// The configuration was reloaded (`ok`), or a reload was refused.
    Reloaded {
        ok: bool,
        /// What changed, or why the new file was refused.
        detail: &'a str,
    },
    /// A policy refused (or, in monitor mode, would have refused) a connection.
    PolicyHit {
        id: u64,
        reason: crate::policy::PolicyReason,
        enforced: bool,
        /// The source as the policy counts it.
        source: std::net::IpAddr,
    },
    /// A proxy-to-proxy link came up, went down or was refused.
    Link(&'a crate::link::LinkEvent),
    Closed {
        id: u64,
        user: Option<&'a str>,
        /// The client mode, once the handshake named one (additive, for metrics).
        mode: Option<ClientMode>,
        reason: CloseReason,
        up: u64,
        down: u64,
        lasted: Duration,
    },
}

/// A subscriber to session events.
pub trait EventSink: Send + Sync {
    fn emit(&self, e: &Event<'_>);
}

/// Fans events out to every sink.
#[derive(Clone, Default)]
pub struct Telemetry {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl Telemetry {
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> Self {
        Self { sinks }
    }
    #[inline]
    pub fn emit(&self, e: Event<'_>) {
        for s in &self.sinks {
            s.emit(&e);
        }
    }
}

/// Writes events as `tracing` lines (connection id on every line; never a
/// secret). Per-connection lines are bounded: a connection that never
/// authenticated (a failed handshake, a probe, a refusal) logs at DEBUG;
/// policy refusals are summarised at INFO every [`crate::logsum::INTERVAL`]
/// ([`LogSink::flush`]); authenticated sessions and DC failures log at most
/// [`LINES_PER_SECOND`] lines a second each, then a count of what was dropped.
pub struct LogSink {
    refusals: crate::logsum::RefusalSummary,
    sessions: crate::logsum::LineBudget,
    upstream: crate::logsum::LineBudget,
}

/// Per-connection INFO/WARN lines per second, per kind.
pub const LINES_PER_SECOND: u32 = 50;

impl Default for LogSink {
    fn default() -> Self {
        Self {
            refusals: Default::default(),
            sessions: crate::logsum::LineBudget::new(LINES_PER_SECOND),
            upstream: crate::logsum::LineBudget::new(LINES_PER_SECOND),
        }
    }
}

impl LogSink {
    /// Writes the refusal summary if the interval is over (called on every
    /// event and by a timer, so a quiet moment still gets its line).
    pub fn flush(&self, min_age: std::time::Duration) {
        if let Some(line) = self.refusals.take(min_age) {
            tracing::info!("{line}");
        }
    }
}

impl EventSink for LogSink {
    fn emit(&self, e: &Event<'_>) {
        match e {
            Event::Opened { id, peer } => tracing::debug!(conn = id, %peer, "accepted"),
            Event::Authenticated { id, user, mode, dc } => {
                let (ok, dropped) = self.sessions.allow();
                if !ok {
                    return;
                }
                if dropped > 0 {
                    tracing::info!(
                        dropped,
                        "session log lines dropped (over {LINES_PER_SECOND}/s)"
                    );
                }
                tracing::info!(
                    conn = id,
                    user,
                    mode = mode.name(),
                    dc,
                    "client authenticated"
                )
            }
            Event::UpstreamConnected { id, dc, addr, took } => {
                tracing::debug!(conn = id, dc, %addr, took_ms = took.as_millis() as u64, "upstream connected")
            }
            Event::UpstreamFailed {
                id,
                dc,
                class,
                error,
            } => {
                let (ok, dropped) = self.upstream.allow();
                if ok {
                    if dropped > 0 {
                        tracing::warn!(
                            dropped,
                            "upstream failure lines dropped (over {LINES_PER_SECOND}/s)"
                        );
                    }
                    tracing::warn!(
                        conn = id,
                        dc,
                        class = class.label(),
                        error,
                        "upstream connect failed"
                    )
                }
            }
            Event::Fronted { id, cause } => {
                tracing::debug!(conn = id, cause = cause.label(), "fronted to mask host")
            }
            Event::TargetEjected { target, cooldown } => {
                tracing::warn!(%target, ?cooldown, "upstream target taken out of service after failures")
            }
            Event::TargetRestored { target } => {
                tracing::info!(%target, "upstream target back in service")
            }
            Event::Link(l) => match l {
                crate::link::LinkEvent::Up {
                    role,
                    peer,
                    cipher,
                    bridge,
                } => tracing::info!(
                    role,
                    %peer,
                    cipher = cipher.name(),
                    bridge = bridge.as_deref().unwrap_or(""),
                    "link up"
                ),
                crate::link::LinkEvent::Down { role, peer, reason } => {
                    tracing::warn!(role, %peer, reason, "link down")
                }
                crate::link::LinkEvent::Refused { role, peer, reason } => {
                    tracing::warn!(role, %peer, reason, "link handshake refused")
                }
                crate::link::LinkEvent::Rekeyed {
                    role,
                    peer,
                    direction,
                } => tracing::info!(role, %peer, direction, "link rekeyed"),
            },
            Event::Reloaded { ok: true, detail } => {
                tracing::info!(detail, "configuration reloaded")
            }
            Event::Reloaded { ok: false, detail } => {
                tracing::error!(
                    error = detail,
                    "configuration reload refused; keeping the running configuration"
                )
            }
            Event::PolicyHit {
                id,
                reason,
                enforced,
                source,
            } => {
                self.refusals.count(*reason, *enforced, *source);
                if *enforced {
                    tracing::debug!(conn = id, reason = reason.label(), "refused by policy")
                } else {
                    tracing::debug!(
                        conn = id,
                        reason = reason.label(),
                        "policy would refuse (monitor mode)"
                    )
                }
                self.flush(crate::logsum::INTERVAL);
            }
            Event::Closed {
                id,
                user,
                reason,
                up,
                down,
                lasted,
                ..
            } => match user {
                // A session: INFO, within the line budget.
                Some(user) => {
                    if self.sessions.allow().0 {
                        tracing::info!(
                            conn = id,
                            user,
                            reason = reason.label(),
                            bytes_up = up,
                            bytes_down = down,
                            secs = lasted.as_secs_f64(),
                            "closed"
                        )
                    }
                }
                // Never authenticated (a probe, a failed handshake, a
                // refusal): DEBUG; floods show in metrics and the summary.
                None => tracing::debug!(
                    conn = id,
                    reason = reason.label(),
                    secs = lasted.as_secs_f64(),
                    "closed"
                ),
            },
        }
    }
}

/// Process-wide counters fed by events (read by tests and, later, metrics).
#[derive(Default, Debug)]
pub struct Counters {
    pub opened: AtomicU64,
    pub authenticated: AtomicU64,
    pub rejected: AtomicU64,
    pub closed: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub upstream_failures: AtomicU64,
    /// Connections fronted to the mask host.
    pub fronted: AtomicU64,
    /// Handshake failures by kind (indexed by `RejectReason::index`).
    pub rejected_by: [AtomicU64; 9],
    /// Connections refused by a policy in enforce mode.
    pub policy_refused: AtomicU64,
    /// Refusals a policy in monitor mode would have made.
    pub policy_monitored: AtomicU64,
    /// Enforced refusals by reason (indexed as `PolicyReason::ALL`).
    pub policy_refused_by: [AtomicU64; crate::policy::PolicyReason::ALL.len()],
}

impl Counters {
    /// Handshake failures of one kind so far.
    pub fn rejected(&self, r: RejectReason) -> u64 {
        self.rejected_by[r.index()].load(Relaxed)
    }

    /// Enforced policy refusals of one reason so far.
    pub fn refused(&self, r: crate::policy::PolicyReason) -> u64 {
        crate::policy::PolicyReason::ALL
            .iter()
            .position(|x| *x == r)
            .map_or(0, |i| self.policy_refused_by[i].load(Relaxed))
    }
}

impl EventSink for Counters {
    fn emit(&self, e: &Event<'_>) {
        match e {
            Event::Opened { .. } => {
                self.opened.fetch_add(1, Relaxed);
            }
            Event::Authenticated { .. } => {
                self.authenticated.fetch_add(1, Relaxed);
            }
            Event::UpstreamFailed { .. } => {
                self.upstream_failures.fetch_add(1, Relaxed);
            }
            Event::Fronted { .. } => {
                self.fronted.fetch_add(1, Relaxed);
            }
            Event::PolicyHit {
                enforced, reason, ..
            } => {
                if *enforced {
                    self.policy_refused.fetch_add(1, Relaxed);
                    if let Some(i) = crate::policy::PolicyReason::ALL
                        .iter()
                        .position(|x| x == reason)
                    {
                        self.policy_refused_by[i].fetch_add(1, Relaxed);
                    }
                } else {
                    self.policy_monitored.fetch_add(1, Relaxed);
                }
            }
            Event::Closed {
                reason, up, down, ..
            } => {
                self.closed.fetch_add(1, Relaxed);
                self.bytes_up.fetch_add(*up, Relaxed);
                self.bytes_down.fetch_add(*down, Relaxed);
                if let CloseReason::Rejected(r) = reason {
                    self.rejected.fetch_add(1, Relaxed);
                    self.rejected_by[r.index()].fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }
}
