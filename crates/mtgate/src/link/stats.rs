//! The link's counters, read by `/metrics` (`mtgate_link_*`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters of one role (bridge or exit), shared by all its links.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Links up now.
    pub up: AtomicU64,
    /// Handshakes that established a link.
    pub established: AtomicU64,
    /// Handshakes refused: wrong token or key, not a link (fronted), no
    /// common cipher, a clock too far, a bad answer.
    pub refused: AtomicU64,
    /// Links that ended (for any reason).
    pub closed: AtomicU64,
    /// Rekeys, both directions.
    pub rekeys: AtomicU64,
    /// Session bytes carried: client side → link, link → client side.
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    /// Record bytes on the wire.
    pub wire_in: AtomicU64,
    pub wire_out: AtomicU64,
    /// Streams opened, and refused by the other side.
    pub streams: AtomicU64,
    pub streams_refused: AtomicU64,
    /// Frames past a stream's credit.
    pub violations: AtomicU64,
    /// Links by chosen cipher (the order of `Cipher::ALL`).
    pub by_cipher: [AtomicU64; 4],
}

impl LinkStats {
    pub fn add_up(&self, n: usize) {
        self.bytes_up.fetch_add(n as u64, Relaxed);
    }
    pub fn add_down(&self, n: usize) {
        self.bytes_down.fetch_add(n as u64, Relaxed);
    }
    pub fn add_wire_in(&self, n: usize) {
        self.wire_in.fetch_add(n as u64, Relaxed);
    }
    pub fn add_wire_out(&self, n: usize) {
        self.wire_out.fetch_add(n as u64, Relaxed);
    }
    pub fn rekeyed(&self) {
        self.rekeys.fetch_add(1, Relaxed);
    }
    pub fn violation(&self) {
        self.violations.fetch_add(1, Relaxed);
    }
    /// A link came up with `cipher`.
    pub fn link_up(&self, cipher: mtgate_proto::link::negotiate::Cipher) {
        self.established.fetch_add(1, Relaxed);
        self.up.fetch_add(1, Relaxed);
        if let Some(i) = mtgate_proto::link::negotiate::Cipher::ALL
            .iter()
            .position(|c| *c == cipher)
        {
            self.by_cipher[i].fetch_add(1, Relaxed);
        }
    }
    pub fn link_down(&self) {
        self.closed.fetch_add(1, Relaxed);
        self.up.fetch_sub(1, Relaxed);
    }
}
