//! Lock-free token buckets for bandwidth caps (GCRA, "virtual scheduling").
//!
//! A [`Bucket`] holds one atomic: the theoretical arrival time (TAT) of the
//! next byte in monotonic nanoseconds. Sending `n` bytes moves the TAT
//! `n / rate` seconds later; the sender must wait until `TAT − burst` before
//! it sends. Callers reserve as they ask ([`Bucket::reserve`] returns the
//! wait and commits the bytes), so many connections sharing one bucket
//! together hold the rate, and a long transfer achieves the cap plus at most
//! one burst. The burst is 1/8 s worth of the rate, at least [`MIN_BURST`].
//! No lock, no allocation; a rate of 0 means "no cap".

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The smallest burst, in bytes.
pub const MIN_BURST: u64 = 16 * 1024;
const NS_PER_S: u128 = 1_000_000_000;

/// A token bucket shared by reference.
#[derive(Debug, Default)]
pub struct Bucket {
    /// Bytes per second; 0 = unlimited.
    rate: AtomicU64,
    /// Theoretical arrival time, monotonic nanoseconds.
    tat_ns: AtomicU64,
}

/// The burst allowed at `rate` bytes per second.
pub fn burst_for(rate: u64) -> u64 {
    (rate / 8).max(MIN_BURST)
}

fn bytes_to_ns(bytes: u64, rate: u64) -> u64 {
    let ns = u128::from(bytes) * NS_PER_S / u128::from(rate.max(1));
    u64::try_from(ns).unwrap_or(u64::MAX)
}

impl Bucket {
    /// A bucket capped at `rate` bytes per second (`None` or 0: no cap).
    pub fn new(rate: Option<u64>) -> Self {
        let b = Self::default();
        b.set_rate(rate);
        b
    }

    /// Changes the cap; the schedule already reserved is kept.
    pub fn set_rate(&self, rate: Option<u64>) {
        self.rate.store(rate.unwrap_or(0), Relaxed);
    }

    /// The cap in bytes per second, if any.
    pub fn rate(&self) -> Option<u64> {
        match self.rate.load(Relaxed) {
            0 => None,
            r => Some(r),
        }
    }

    /// Reserves `n` bytes at monotonic time `now_ns`; returns how long the
    /// caller must wait before sending them (zero: send now).
    pub fn reserve(&self, n: u64, now_ns: u64) -> Duration {
        let rate = self.rate.load(Relaxed);
        if rate == 0 {
            return Duration::ZERO;
        }
        let cost = bytes_to_ns(n, rate);
        let burst = bytes_to_ns(burst_for(rate), rate);
        let mut tat = self.tat_ns.load(Relaxed);
        loop {
            let new_tat = tat.max(now_ns).saturating_add(cost);
            match self
                .tat_ns
                .compare_exchange_weak(tat, new_tat, Relaxed, Relaxed)
            {
                Ok(_) => {
                    let wait = new_tat.saturating_sub(now_ns).saturating_sub(burst);
                    return Duration::from_nanos(wait);
                }
                Err(actual) => tat = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Sends `chunk`-byte writes as fast as the bucket allows for `secs`
    /// simulated seconds on a millisecond clock (waits rounded up, as a timer
    /// would); returns the bytes sent.
    fn simulate(rate: u64, chunk: u64, secs: u64) -> u64 {
        let b = Bucket::new(Some(rate));
        let mut now_ms: u64 = 1000;
        let end = now_ms + secs * 1000;
        let mut sent = 0;
        loop {
            let wait = b.reserve(chunk, now_ms * 1_000_000);
            now_ms += (wait.as_nanos() as u64).div_ceil(1_000_000);
            if now_ms >= end {
                return sent;
            }
            sent += chunk;
        }
    }

    #[test]
    fn no_cap_never_waits() {
        let b = Bucket::new(None);
        assert_eq!(b.reserve(u64::MAX, 0), Duration::ZERO);
        assert_eq!(b.rate(), None);
    }

    #[test]
    fn burst_then_rate() {
        let b = Bucket::new(Some(1_000_000)); // burst 125 000 bytes
        let t = 5_000_000_000;
        assert_eq!(b.reserve(125_000, t), Duration::ZERO);
        assert_eq!(b.reserve(1000, t), Duration::from_millis(1));
        // After a second idle the burst is back, no more.
        let t = t + 2_000_000_000;
        assert_eq!(b.reserve(125_000, t), Duration::ZERO);
        assert_eq!(b.reserve(10_000, t), Duration::from_millis(10));
    }

    #[test]
    fn full_speed_holds_the_cap_within_10_percent() {
        for (rate, chunk) in [
            (1_000_000u64, 16_384u64),
            (4_000_000, 65_536),
            (50_000, 1_400),
            (100_000_000, 262_144),
        ] {
            let sent = simulate(rate, chunk, 10);
            let achieved = sent as f64 / 10.0;
            let ratio = achieved / rate as f64;
            assert!(
                (0.9..=1.1).contains(&ratio),
                "rate {rate} chunk {chunk}: achieved {achieved} ({ratio})"
            );
        }
    }

    #[test]
    fn shared_by_many_senders() {
        // Eight connections take turns on one bucket: together they hold the cap.
        let rate = 2_000_000;
        let b = Bucket::new(Some(rate));
        let mut ready = [1000u64; 8];
        let mut sent = 0u64;
        loop {
            let (i, &t) = ready.iter().enumerate().min_by_key(|(_, t)| **t).unwrap();
            if t >= 11_000 {
                break;
            }
            let wait = b.reserve(32_768, t * 1_000_000);
            ready[i] = t + (wait.as_nanos() as u64).div_ceil(1_000_000);
            if ready[i] < 11_000 {
                sent += 32_768;
            }
        }
        let ratio = sent as f64 / 10.0 / rate as f64;
        assert!((0.9..=1.1).contains(&ratio), "{ratio}");
    }

    #[test]
    fn rate_change_applies() {
        let b = Bucket::new(Some(1_000_000));
        b.set_rate(Some(100_000));
        assert_eq!(b.rate(), Some(100_000));
        let t = 1_000_000_000;
        assert_eq!(b.reserve(16_384, t), Duration::ZERO);
        assert_eq!(b.reserve(1_000, t), Duration::from_millis(10));
        b.set_rate(None);
        assert_eq!(b.reserve(1 << 30, t), Duration::ZERO);
    }

    proptest! {
        #[test]
        fn never_panics(rate in any::<u64>(), n in any::<u64>(), now in any::<u64>()) {
            let b = Bucket::new(Some(rate));
            let _ = b.reserve(n, now);
            let _ = b.reserve(n, now);
        }

        #[test]
        fn within_ten_percent(rate in 200_000u64..200_000_000, chunk in 512u64..262_144) {
            // Chunks from 1/5000 to 1/10 of a second's worth.
            let chunk = chunk.max(rate / 5000).min(rate / 10);
            let sent = simulate(rate, chunk, 10);
            let ratio = sent as f64 / 10.0 / rate as f64;
            prop_assert!((0.9..=1.1).contains(&ratio), "{}", ratio);
        }
    }
}
