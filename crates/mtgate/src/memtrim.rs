//! Gives memory back after load. glibc's allocator keeps freed memory for
//! reuse: after 10 000 connections closed, RSS stayed at its peak (measured
//! +90 % over the baseline 30 s later). Once the open connections have
//! fallen by [`DROP`] from their peak since the last trim, this asks the
//! allocator to return its free pages (`malloc_trim(0)`: every arena, free
//! pages inside the heap too), at most every [`MIN_GAP`]. A steady load
//! never triggers it; nothing on the connection path changes.
//!
//! This is the fallback of builds without the `jemalloc` feature (the
//! default build uses jemalloc, which returns memory on its own and did
//! better: docs/BENCHMARKS.md, "Memory after load"). On other C libraries
//! it does nothing.

use std::time::{Duration, Instant};

/// How far the open connections must fall from their peak to trim.
pub const DROP: usize = 256;
/// Trims at least this far apart.
pub const MIN_GAP: Duration = Duration::from_secs(2);
/// How often the connection count is looked at.
pub const PERIOD: Duration = Duration::from_secs(1);

/// Returns free memory to the system, where the allocator can. With the
/// `jemalloc` feature (the default build) jemalloc's background thread does
/// this on its own and this does nothing.
pub fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "jemalloc")))]
    // SAFETY: malloc_trim takes no pointer and has no precondition; glibc
    // serialises it with every arena's lock, so it may run beside any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Decides when to trim from the open-connection count.
#[derive(Debug)]
pub struct Trimmer {
    peak: usize,
    last: Option<Instant>,
}

impl Default for Trimmer {
    fn default() -> Self {
        Self::new()
    }
}

impl Trimmer {
    pub fn new() -> Self {
        Self {
            peak: 0,
            last: None,
        }
    }

    /// `open` connections now (at `now`): whether to trim.
    pub fn observe(&mut self, open: usize, now: Instant) -> bool {
        self.peak = self.peak.max(open);
        let due = self.last.is_none_or(|t| now.duration_since(t) >= MIN_GAP);
        if self.peak - open >= DROP && due {
            self.peak = open;
            self.last = Some(now);
            return true;
        }
        false
    }
}

/// Watches `open()` and trims after load, until the runtime ends. With the
/// `jemalloc` feature there is nothing to trim, and nothing is started.
pub fn spawn(open: impl Fn() -> usize + Send + 'static) {
    if cfg!(feature = "jemalloc") {
        return;
    }
    tokio::spawn(async move {
        let mut t = Trimmer::new();
        loop {
            tokio::time::sleep(PERIOD).await;
            if t.observe(open(), Instant::now()) {
                let started = Instant::now();
                trim();
                tracing::debug!(
                    took_ms = started.elapsed().as_millis() as u64,
                    "memory trimmed after load"
                );
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_after_a_fall_not_under_steady_load() {
        let mut t = Trimmer::new();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Steady and rising load: never.
        for (i, n) in [10, 500, 5000, 5000, 4900, 5000].into_iter().enumerate() {
            assert!(!t.observe(n, at(i as u64)), "{n}");
        }
        // A fall of DROP or more: once.
        assert!(t.observe(100, at(10)));
        assert!(!t.observe(100, at(11)));
        // Up again and down within MIN_GAP: waits for the gap.
        assert!(!t.observe(2000, at(11)));
        let soon = at(11) + Duration::from_millis(500);
        assert!(!t.observe(0, soon));
        assert!(t.observe(0, at(13)));
        trim(); // callable anywhere
    }
}
