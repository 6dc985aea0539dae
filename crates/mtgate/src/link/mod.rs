//! The proxy-to-proxy link (issue 15): a bridge node near the users carries
//! each client session to an exit node abroad, which opens the DC
//! connection. The wire protocol is pure and lives in
//! `mtgate_proto::link` (negotiation, Noise handshake, records, frames);
//! this room is its I/O:
//!
//! * [`config`]: `[link.exit]` (this node is an exit) and `[link.bridge]`
//!   (this node's direct-mode DC connections go through an exit).
//! * [`carriage`]: what a link travels in: TCP, TLS, WebSocket (a CDN
//!   may sit between).
//! * [`mux`]: one link connection: records, many streams, credit-based
//!   flow control, keepalive, rekeying.
//! * [`bridge`]: the links to the exit, dialled and redialled; a stream per
//!   session, handed to the session as a loopback TCP socket
//!   (`crate::upstream` asks for it like any other DC target).
//! * [`exit`]: the link port: handshakes, fronting of everything else, a
//!   DC connection per stream.
//! * [`stats`]: counters for `/metrics`.
//!
//! Links come up, go down and are refused as [`LinkEvent`]s on the
//! telemetry bus, so logs and the audit trail follow them like sessions.

pub mod bridge;
pub mod carriage;
pub mod config;
pub mod exit;
pub mod mux;
pub mod stats;

pub use bridge::Bridge;
pub use config::{BridgeConfig, ExitConfig, LinkConfig, RawLink};

use mtgate_proto::link::negotiate::Cipher;
use std::sync::Arc;

/// Where link events go (the telemetry bus).
pub type Events = crate::events::Telemetry;

/// Something that happened to a link.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// A link came up (`bridge`: the exit's name for the bridge).
    Up {
        role: &'static str,
        peer: String,
        cipher: Cipher,
        bridge: Option<String>,
    },
    /// A link ended.
    Down {
        role: &'static str,
        peer: String,
        reason: String,
    },
    /// A direction of a link moved to its next key (`out`: this side's,
    /// `in`: the peer's).
    Rekeyed {
        role: &'static str,
        peer: String,
        direction: &'static str,
    },
    /// A handshake failed after the token was right (no common cipher, a
    /// clock too far) or, on the bridge, the exit did not authenticate.
    Refused {
        role: &'static str,
        peer: String,
        reason: String,
    },
}

pub(crate) fn emit(t: &Events, e: LinkEvent) {
    t.emit(crate::events::Event::Link(&e));
}

/// Both roles' counters, kept across reloads.
#[derive(Debug, Default)]
pub struct Stats {
    pub bridge: Arc<stats::LinkStats>,
    pub exit: Arc<stats::LinkStats>,
}
