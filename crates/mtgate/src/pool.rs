//! Relay buffers: taken from a pool only while data is in flight.
//!
//! An idle connection holds no buffer: the relay waits for readiness first and
//! only then takes one, giving it back when the socket would block. Buffers
//! come in two size classes: **small** (4 KiB, for the first read of a burst:
//! most MTProto messages are small) and **large** (four TLS records with their
//! headers, for bursts that filled a small one). Each class has a bounded
//! per-thread free list, so the hot path takes no lock and allocates nothing
//! once warm, and a thread caches at most 1 MiB + 2 MiB. Counters per class
//! (size, hits, misses, in use, cached) are exported as metrics.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

/// TLS records batched per write toward a FakeTLS client.
pub const RECORDS_PER_BUF: usize = 4;
/// Bytes per large buffer: four 16 KiB TLS record payloads with their 5-byte headers, and slack.
pub const BUF_SIZE: usize = RECORDS_PER_BUF * (16 * 1024 + 5) + 64;
/// Bytes per small buffer.
pub const SMALL_SIZE: usize = 4096;

/// A buffer size class.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Small,
    Large,
}

impl Class {
    /// Both classes, in metric order.
    pub const ALL: [Class; 2] = [Class::Small, Class::Large];

    /// Bytes per buffer of this class.
    pub const fn size(self) -> usize {
        match self {
            Class::Small => SMALL_SIZE,
            Class::Large => BUF_SIZE,
        }
    }

    /// Free buffers of this class kept per worker thread (1 MiB and 2 MiB).
    pub const fn max_free(self) -> usize {
        match self {
            Class::Small => 256,
            Class::Large => 32,
        }
    }

    /// The metric label.
    pub const fn name(self) -> &'static str {
        match self {
            Class::Small => "small",
            Class::Large => "large",
        }
    }

    const fn index(self) -> usize {
        match self {
            Class::Small => 0,
            Class::Large => 1,
        }
    }
}

/// Counters of one class (process-wide).
#[derive(Debug, Default)]
pub struct PoolStats {
    /// Buffers taken from a free list.
    pub hits: AtomicU64,
    /// Buffers newly allocated.
    pub misses: AtomicU64,
    /// Buffers holding in-flight data now.
    pub in_use: AtomicUsize,
    /// Buffers cached in the free lists now (all threads).
    pub cached: AtomicUsize,
}

impl PoolStats {
    const fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            in_use: AtomicUsize::new(0),
            cached: AtomicUsize::new(0),
        }
    }
}

/// The counters of each class, indexed like [`Class::ALL`].
pub static STATS: [PoolStats; 2] = [PoolStats::new(), PoolStats::new()];

/// The counters of `class`.
pub fn stats(class: Class) -> &'static PoolStats {
    &STATS[class.index()]
}

/// One thread's free lists; a thread that ends takes its cached buffers
/// out of the `cached` gauges.
struct FreeLists([Vec<Box<[u8]>>; 2]);

impl Drop for FreeLists {
    fn drop(&mut self) {
        for c in Class::ALL {
            stats(c).cached.fetch_sub(self.0[c.index()].len(), Relaxed);
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeLists> = const { RefCell::new(FreeLists([Vec::new(), Vec::new()])) };
}

/// A buffer on loan from the pool; given back when dropped.
pub struct PooledBuf {
    buf: Option<Box<[u8]>>,
    class: Class,
}

impl PooledBuf {
    /// A large buffer ([`BUF_SIZE`] bytes).
    pub fn take() -> Self {
        Self::take_class(Class::Large)
    }

    /// A buffer of `class`.
    pub fn take_class(class: Class) -> Self {
        let st = stats(class);
        let b = FREE.with(|f| f.borrow_mut().0[class.index()].pop());
        let buf = match b {
            Some(b) => {
                st.hits.fetch_add(1, Relaxed);
                st.cached.fetch_sub(1, Relaxed);
                b
            }
            None => {
                st.misses.fetch_add(1, Relaxed);
                vec![0u8; class.size()].into_boxed_slice()
            }
        };
        st.in_use.fetch_add(1, Relaxed);
        Self {
            buf: Some(buf),
            class,
        }
    }

    /// This buffer's size class.
    pub fn class(&self) -> Class {
        self.class
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
        let st = stats(self.class);
        st.in_use.fetch_sub(1, Relaxed);
        if let Some(b) = self.buf.take() {
            // `try_with`: during thread teardown the free list may be gone; then just free.
            let _ = FREE.try_with(|f| {
                let mut lists = f.borrow_mut();
                let list = &mut lists.0[self.class.index()];
                if list.len() < self.class.max_free() {
                    list.push(b);
                    st.cached.fetch_add(1, Relaxed);
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_per_class() {
        for class in Class::ALL {
            let st = stats(class);
            let before = st.hits.load(Relaxed);
            drop(PooledBuf::take_class(class));
            let b = PooledBuf::take_class(class);
            assert_eq!(b.len(), class.size());
            assert_eq!(b.class(), class);
            assert!(st.hits.load(Relaxed) > before);
            assert!(st.in_use.load(Relaxed) >= 1);
        }
    }

    #[test]
    fn free_lists_are_bounded() {
        // On a thread of its own, so other tests' buffers do not count.
        std::thread::spawn(|| {
            let n = Class::Small.max_free() + 10;
            let bufs: Vec<_> = (0..n)
                .map(|_| PooledBuf::take_class(Class::Small))
                .collect();
            drop(bufs);
            let kept = FREE.with(|f| f.borrow().0[Class::Small.index()].len());
            assert_eq!(kept, Class::Small.max_free());
        })
        .join()
        .expect("thread");
    }
}
