//! A bounded replay cache for handshake fingerprints (PROTOCOL §3.7, §6.6).
//!
//! Entries are 16-byte fingerprints: the first 16 bytes of a FakeTLS client
//! random, or bytes 8..24 of an obfuscated2 header. Only handshakes that
//! already proved knowledge of a user's secret are inserted (the caller checks
//! the HMAC or the obfuscated2 tag first), so a flood of forged handshakes
//! never touches the cache.
//!
//! **Memory is fixed.** Two generations of exact sets, each allocated once for
//! `capacity / 2` entries and never grown: inserts go to the current
//! generation; when it is full, or older than half the time window, the older
//! generation is dropped and the current one takes its place. Lookups check
//! both. So the cache always remembers at least the last `capacity / 2`
//! handshakes and everything from the last `max_age / 2`, and at most
//! `capacity`.
//!
//! **False positives: none** (keys are compared exactly; two distinct clients
//! collide only if their 128-bit randoms do). **At the cap**, the oldest half is
//! forgotten at once; a replay of a handshake older than that is then not
//! caught by the cache (the FakeTLS timestamp window still refuses it once it
//! is older than the window, so size the cache for handshakes/s × window).

use std::collections::HashSet;

#[derive(Debug)]
struct Generation {
    set: HashSet<[u8; 16]>,
    started: u64,
}

impl Generation {
    /// A generation whose memory is not only allocated but resident: every
    /// slot is written once (filled with placeholder keys, then cleared,
    /// which keeps the buckets), so the cache's fixed size shows in RSS from
    /// the start instead of creeping in as handshakes fill it.
    fn new(cap: usize, now: u64) -> Self {
        let mut set = HashSet::with_capacity(cap);
        for i in 0..cap as u128 {
            set.insert(i.to_le_bytes());
        }
        set.clear();
        Self { set, started: now }
    }
}

/// A replay cache with fixed memory (see the module docs).
#[derive(Debug)]
pub struct ReplayCache {
    current: Generation,
    previous: Generation,
    half: usize,
    max_age_secs: u64,
}

impl ReplayCache {
    /// `capacity`: entries remembered at most; `max_age_secs`: the time window to cover.
    pub fn new(capacity: usize, max_age_secs: u64) -> Self {
        let half = (capacity / 2).max(1);
        Self {
            current: Generation::new(half, 0),
            previous: Generation::new(half, 0),
            half,
            max_age_secs,
        }
    }

    /// Records `key` seen at `now`; returns `true` if it was already there (a replay).
    pub fn check_and_insert(&mut self, key: [u8; 16], now: u64) -> bool {
        if self.current.set.contains(&key) || self.previous.set.contains(&key) {
            return true;
        }
        let aged = now.saturating_sub(self.current.started) > self.max_age_secs / 2;
        if self.current.set.len() >= self.half || (aged && !self.current.set.is_empty()) {
            // Reuse the older generation's allocation: clear keeps the buckets.
            std::mem::swap(&mut self.current, &mut self.previous);
            self.current.set.clear();
            self.current.started = now;
        } else if self.current.set.is_empty() {
            self.current.started = now;
        }
        self.current.set.insert(key);
        false
    }

    /// Entries currently remembered.
    pub fn len(&self) -> usize {
        self.current.set.len() + self.previous.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries ever remembered at once.
    pub fn capacity(&self) -> usize {
        2 * self.half
    }

    /// Bytes held by the two tables (buckets + control bytes), fixed at construction.
    pub fn memory_bytes(&self) -> usize {
        let per = |g: &Generation| g.set.capacity() * (16 + 1) * 8 / 7;
        per(&self.current) + per(&self.previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn replay_detected_and_bounded() {
        let mut c = ReplayCache::new(6, 100);
        assert!(!c.check_and_insert([1; 16], 0));
        assert!(c.check_and_insert([1; 16], 1));
        for i in 2..10u8 {
            assert!(!c.check_and_insert([i; 16], 2));
        }
        assert!(c.len() <= 6);
        // The last half is always remembered.
        for i in 7..10u8 {
            assert!(c.check_and_insert([i; 16], 3));
        }
        // [1] fell out with the oldest generation.
        assert!(!c.check_and_insert([1; 16], 3));
        // Age-out: after two half-windows everything old is gone.
        assert!(!c.check_and_insert([42; 16], 200));
        assert!(!c.check_and_insert([43; 16], 300));
        assert!(!c.check_and_insert([9; 16], 300));
    }

    #[test]
    fn memory_is_fixed_under_a_flood() {
        let mut c = ReplayCache::new(10_000, 1_000_000);
        let before = c.memory_bytes();
        for i in 0u32..200_000 {
            let mut k = [0u8; 16];
            k[..4].copy_from_slice(&i.to_le_bytes());
            assert!(!c.check_and_insert(k, 0));
        }
        assert_eq!(c.memory_bytes(), before);
        assert!(c.len() <= c.capacity());
    }

    proptest! {
        #[test]
        fn never_exceeds_capacity_and_remembers_recent(keys in proptest::collection::vec(any::<u16>(), 0..500), cap in 2usize..50) {
            let mut c = ReplayCache::new(cap, 1000);
            let mut recent: Vec<u16> = Vec::new();
            for (t, k) in keys.iter().enumerate() {
                let mut key = [0u8; 16];
                key[..2].copy_from_slice(&k.to_le_bytes());
                let seen = c.check_and_insert(key, t as u64 / 10);
                // Anything among the last cap/2 distinct inserts must be caught.
                if recent.iter().rev().take(cap / 2).any(|r| r == k) {
                    prop_assert!(seen);
                }
                if !seen { recent.push(*k); }
                prop_assert!(c.len() <= c.capacity());
            }
        }
    }
}
