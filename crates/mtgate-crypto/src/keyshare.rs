//! Fresh X25519 key shares for the FakeTLS ServerHello, computed ahead of the
//! handshake by a background thread.
//!
//! The ServerHello carries a real X25519 public key (the u-coordinate of
//! `[k]B` for a fresh random scalar `k`), as a TLS server's would; FakeTLS
//! never completes the key exchange, so the scalar is dropped at once. The
//! scalar multiplication is about 12 % of an `ee` handshake's CPU, so
//! [`start_pool`] runs a thread at the lowest scheduling priority that keeps a
//! bounded pool of shares filled from spare CPU time; [`key_share`] takes one
//! (each share is handed out once) or, when the pool is empty or was never
//! started (tests, fuzzing), computes one from the caller's randomness.

use std::sync::{Condvar, Mutex, OnceLock};
use zeroize::Zeroize;

struct Pool {
    shares: Mutex<Vec<[u8; 32]>>,
    /// Signalled when the pool falls to half its capacity.
    low: Condvar,
    cap: usize,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Starts the filler thread (once per process) with a pool of `cap` shares;
/// returns whether this call started it.
pub fn start_pool(cap: usize) -> bool {
    let cap = cap.clamp(2, 1 << 16);
    let mut started = false;
    POOL.get_or_init(|| {
        started = true;
        Pool {
            shares: Mutex::new(Vec::with_capacity(cap)),
            low: Condvar::new(),
            cap,
        }
    });
    if started {
        let spawned = std::thread::Builder::new()
            .name("mtgate-keyshares".into())
            .spawn(|| {
                if let Some(p) = POOL.get() {
                    fill(p)
                }
            });
        // Without the thread every share is computed inline, as before.
        started = spawned.is_ok();
    }
    started
}

/// Shares in the pool now (for tests and metrics).
pub fn pooled() -> usize {
    POOL.get().map_or(0, |p| lock(p).len())
}

/// A fresh X25519 public key: from the pool if it has one, else computed from
/// a scalar drawn with `rand`.
pub fn key_share(rand: &mut dyn FnMut(&mut [u8])) -> [u8; 32] {
    if let Some(p) = POOL.get() {
        let mut v = lock(p);
        let got = v.pop();
        if v.len() + 1 == p.cap / 2 {
            p.low.notify_one();
        }
        drop(v);
        if let Some(share) = got {
            return share;
        }
        // Empty: the filler is behind (or starved by load); wake it anyway.
        p.low.notify_one();
    }
    compute(rand)
}

fn compute(rand: &mut dyn FnMut(&mut [u8])) -> [u8; 32] {
    let mut scalar = [0u8; 32];
    rand(&mut scalar);
    let share = crate::x25519_public_key(scalar);
    scalar.zeroize();
    share
}

fn lock(p: &Pool) -> std::sync::MutexGuard<'_, Vec<[u8; 32]>> {
    p.shares.lock().unwrap_or_else(|e| e.into_inner())
}

fn fill(p: &'static Pool) {
    lowest_priority();
    loop {
        let need = {
            let mut v = lock(p);
            while v.len() >= p.cap / 2 {
                v = p.low.wait(v).unwrap_or_else(|e| e.into_inner());
            }
            p.cap - v.len()
        };
        for _ in 0..need {
            let share = compute(&mut crate::fill_random);
            let mut v = lock(p);
            if v.len() >= p.cap {
                break;
            }
            v.push(share);
        }
    }
}

/// Puts the calling thread at nice 19 (Linux: the nice value is per thread),
/// so under full load the workers run first and shares are computed inline.
fn lowest_priority() {
    #[cfg(target_os = "linux")]
    // SAFETY: setpriority has no memory-safety preconditions; on Linux
    // `PRIO_PROCESS` with `who = 0` addresses the calling thread. A failure
    // only leaves the thread at normal priority.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_real_and_fresh() {
        // Inline (whether or not another test started the pool): the scalar
        // from `rand` gives the share x25519 gives.
        let mut seq = 7u8;
        let mut rand = |b: &mut [u8]| {
            for x in b {
                *x = seq;
                seq = seq.wrapping_add(1);
            }
        };
        if POOL.get().is_none() {
            let mut expect_scalar = [0u8; 32];
            for (i, x) in expect_scalar.iter_mut().enumerate() {
                *x = 7 + i as u8;
            }
            assert_eq!(
                key_share(&mut rand),
                crate::x25519_public_key(expect_scalar)
            );
        }
        // Pooled: filled in the background, each share handed out once.
        start_pool(64);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while pooled() < 32 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(pooled() >= 32, "the filler did not fill the pool");
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = key_share(&mut crate::fill_random);
            assert_ne!(s, [0u8; 32]);
            assert!(seen.insert(s), "a share was handed out twice");
        }
    }
}
