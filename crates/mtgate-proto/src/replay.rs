//! A bounded replay cache for handshake fingerprints (PROTOCOL §3.7, §6.6).
//!
//! Entries are 16-byte fingerprints (the first 16 bytes of a FakeTLS client
//! random, or bytes 8..24 of an obfuscated2 header). Memory is fixed by
//! `capacity`: at the cap the oldest entry is evicted first (FIFO), and
//! entries older than `max_age_secs` are dropped as time passes. There are no
//! false positives (exact keys); the false-negative risk is a replay that
//! arrives after `capacity` newer handshakes evicted it, which the timestamp
//! window bounds for FakeTLS.

use std::collections::{HashSet, VecDeque};

/// A replay cache with a fixed capacity.
#[derive(Debug)]
pub struct ReplayCache {
    set: HashSet<[u8; 16]>,
    order: VecDeque<([u8; 16], u64)>,
    capacity: usize,
    max_age_secs: u64,
}

impl ReplayCache {
    pub fn new(capacity: usize, max_age_secs: u64) -> Self {
        let capacity = capacity.max(1);
        Self {
            set: HashSet::with_capacity(capacity),
            order: VecDeque::with_capacity(capacity),
            capacity,
            max_age_secs,
        }
    }

    /// Records `key` seen at `now`; returns `true` if it was already there (a replay).
    pub fn check_and_insert(&mut self, key: [u8; 16], now: u64) -> bool {
        while let Some(&(k, t)) = self.order.front() {
            if t.saturating_add(self.max_age_secs) >= now {
                break;
            }
            self.order.pop_front();
            self.set.remove(&k);
        }
        if self.set.contains(&key) {
            return true;
        }
        if self.order.len() >= self.capacity {
            if let Some((k, _)) = self.order.pop_front() {
                self.set.remove(&k);
            }
        }
        self.set.insert(key);
        self.order.push_back((key, now));
        false
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replay_detected_and_bounded() {
        let mut c = ReplayCache::new(3, 100);
        assert!(!c.check_and_insert([1; 16], 0));
        assert!(c.check_and_insert([1; 16], 1));
        for i in 2..10u8 {
            assert!(!c.check_and_insert([i; 16], 2));
        }
        assert_eq!(c.len(), 3);
        // [1] was evicted by capacity.
        assert!(!c.check_and_insert([1; 16], 3));
        // Age-out.
        assert!(!c.check_and_insert([42; 16], 500));
        assert_eq!(c.len(), 1);
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity(keys in proptest::collection::vec(any::<u8>(), 0..500), cap in 1usize..50) {
            let mut c = ReplayCache::new(cap, 1000);
            for (t, k) in keys.iter().enumerate() {
                c.check_and_insert([*k; 16], t as u64);
                prop_assert!(c.len() <= cap);
                prop_assert_eq!(c.set.len(), c.order.len());
            }
        }
    }
}
