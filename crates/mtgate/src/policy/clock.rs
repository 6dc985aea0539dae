//! Time for the policy tables: wall-clock milliseconds (calendars, expiry,
//! time windows, persistence) and monotonic milliseconds (rates, decay).
//! Tests inject a [`ManualClock`].

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// A source of time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Milliseconds since the Unix epoch (UTC).
    fn wall_ms(&self) -> i64;
    /// Milliseconds on a clock that never goes back.
    fn mono_ms(&self) -> u64;
}

/// The shared handle every table takes.
pub type SharedClock = Arc<dyn Clock>;

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(Self {
            origin: Instant::now(),
        })
    }
}

impl Clock for SystemClock {
    fn wall_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
    fn mono_ms(&self) -> u64 {
        // Start at 1 s so "0" can mean "never" in tables.
        1000 + self.origin.elapsed().as_millis() as u64
    }
}

/// A clock tests set and advance by hand; both readings move together.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicI64,
    mono: AtomicU64,
}

impl ManualClock {
    /// A clock reading `wall_ms` (Unix milliseconds).
    pub fn new(wall_ms: i64) -> Arc<Self> {
        Arc::new(Self {
            wall: AtomicI64::new(wall_ms),
            mono: AtomicU64::new(1000),
        })
    }
    /// Moves both readings forward.
    pub fn advance_ms(&self, ms: u64) {
        self.wall.fetch_add(ms as i64, Relaxed);
        self.mono.fetch_add(ms, Relaxed);
    }
    /// Sets the wall reading (the monotonic one moves forward by the same amount, or not at all).
    pub fn set_wall_ms(&self, wall_ms: i64) {
        let old = self.wall.swap(wall_ms, Relaxed);
        if wall_ms > old {
            self.mono.fetch_add((wall_ms - old) as u64, Relaxed);
        }
    }
}

impl Clock for ManualClock {
    fn wall_ms(&self) -> i64 {
        self.wall.load(Relaxed)
    }
    fn mono_ms(&self) -> u64 {
        self.mono.load(Relaxed)
    }
}
