//! Relay buffers: taken from a pool only while data is in flight.
//!
//! An idle connection holds no buffer: the relay waits for readiness first and
//! only then takes one, giving it back when the socket would block. Buffers are
//! one size class (one TLS record plus header, rounded up), kept in a bounded
//! per-thread free list, so the hot path takes no lock and allocates nothing
//! once warm. Counters show size, hits and buffers in use.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// TLS records batched per write toward a FakeTLS client.
pub const RECORDS_PER_BUF: usize = 4;
/// Bytes per buffer: four 16 KiB TLS record payloads with their 5-byte headers, and slack.
pub const BUF_SIZE: usize = RECORDS_PER_BUF * (16 * 1024 + 5) + 64;
/// Free buffers kept per worker thread.
pub const MAX_FREE_PER_THREAD: usize = 64;

/// Pool counters (process-wide).
#[derive(Debug, Default)]
pub struct PoolStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub in_use: AtomicUsize,
}

/// The process-wide pool counters.
pub static STATS: PoolStats = PoolStats {
    hits: AtomicU64::new(0),
    misses: AtomicU64::new(0),
    in_use: AtomicUsize::new(0),
};

thread_local! {
    static FREE: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer; returns itself to the current thread's free list on drop.
pub struct PooledBuf {
    buf: Option<Box<[u8]>>,
}

impl PooledBuf {
    pub fn take() -> Self {
        let b = FREE.with(|f| f.borrow_mut().pop());
        let buf = match b {
            Some(b) => {
                STATS.hits.fetch_add(1, Relaxed);
                b
            }
            None => {
                STATS.misses.fetch_add(1, Relaxed);
                vec![0u8; BUF_SIZE].into_boxed_slice()
            }
        };
        STATS.in_use.fetch_add(1, Relaxed);
        Self { buf: Some(buf) }
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or(&[])
    }
}

impl std::ops::DerefMut for PooledBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        STATS.in_use.fetch_sub(1, Relaxed);
        if let Some(b) = self.buf.take() {
            // `try_with`: during thread teardown the free list may be gone; then just free.
            let _ = FREE.try_with(|f| {
                let mut f = f.borrow_mut();
                if f.len() < MAX_FREE_PER_THREAD {
                    f.push(b);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused() {
        let before = STATS.hits.load(Relaxed);
        drop(PooledBuf::take());
        let b = PooledBuf::take();
        assert_eq!(b.len(), BUF_SIZE);
        assert!(STATS.hits.load(Relaxed) > before);
        assert!(STATS.in_use.load(Relaxed) >= 1);
    }
}
