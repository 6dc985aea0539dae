//! The proxy-to-proxy link (issue 15), sans I/O: what a bridge node and an
//! exit node say to each other.
//!
//! * [`negotiate`]: the cipher offers and the exit's choice.
//! * [`handshake`]: Noise `NKpsk0` (X25519; the exit's static key pinned,
//!   the link token as PSK) carrying both offers, then HKDF data keys.
//! * [`record`]: the records every later byte travels in, sealed with the
//!   chosen AEAD under counter nonces, rekeyed by the sender.
//! * [`frame`]: the multiplexer's frames inside records (open, data,
//!   window credit, fin, reset, ping).
//!
//! The I/O side (carriage, multiplexer tasks, flow control) is
//! `mtgate::link`.

pub mod frame;
pub mod handshake;
pub mod negotiate;
pub mod record;
