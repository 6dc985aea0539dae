//! Single-thread AES-256-CTR speed of the backend candidates, in place, buffers of
//! 16 KiB (bulk relay reads), 1500 bytes (one MTU-sized read) and 64 bytes (a small message).
//!
//! ```sh
//! cargo run --release -p mtgate-crypto --example ctr_speed [-- SECONDS_PER_ROUND ROUNDS]
//! ```
//!
//! Each (candidate, size) cell runs ROUNDS rounds (default 5) of SECONDS_PER_ROUND
//! (default 0.4) after a warm-up; the rounds are interleaved across the candidates so
//! that noise from other processes hits all of them alike. Prints the median and the
//! best round in GB/s (10^9 bytes per second) of this thread's CPU time
//! (`CLOCK_THREAD_CPUTIME_ID`), so that time slices lost to other processes on a shared
//! machine do not count, and the median in GB per wall-clock second for comparison.

use std::hint::black_box;
use std::time::Instant;

use mtgate_crypto::AesCtr;

const KEY: [u8; 32] = [0x42; 32];
const IV: [u8; 16] = [0x17; 16];

type Ctr09 = ctr010::Ctr128BE<aes09::Aes256Enc>;

enum Cand {
    Selected(AesCtr),
    Reference(AesCtr),
    Aes09(Box<Ctr09>),
}

impl Cand {
    fn apply(&mut self, buf: &mut [u8]) {
        match self {
            Cand::Selected(c) | Cand::Reference(c) => c.apply(buf),
            Cand::Aes09(c) => {
                use ctr010::cipher::StreamCipher;
                c.apply_keystream(buf)
            }
        }
    }
}

fn make(i: usize) -> (String, Cand) {
    match i {
        0 => (
            "aes 0.8 + ctr 0.9 (reference)".into(),
            Cand::Reference(AesCtr::new_reference(&KEY, &IV)),
        ),
        1 => {
            use ctr010::cipher::KeyIvInit;
            (
                "aes 0.9 + ctr 0.10 (RustCrypto VAES)".into(),
                Cand::Aes09(Box::new(Ctr09::new(&KEY.into(), &IV.into()))),
            )
        }
        _ => {
            let c = AesCtr::new(&KEY, &IV);
            (format!("AesCtr::new ({})", c.backend()), Cand::Selected(c))
        }
    }
}

/// CPU time of this thread, in seconds.
fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// (GB per CPU second, GB per wall second) over `secs` of this thread's CPU time.
fn round(c: &mut Cand, buf: &mut [u8], secs: f64) -> (f64, f64) {
    let mut bytes = 0u64;
    let start = Instant::now();
    let cpu0 = thread_cpu();
    loop {
        for _ in 0..64 {
            c.apply(black_box(&mut *buf));
        }
        bytes += 64 * buf.len() as u64;
        let cpu = thread_cpu() - cpu0;
        if cpu >= secs {
            let wall = start.elapsed().as_secs_f64();
            return (bytes as f64 / cpu / 1e9, bytes as f64 / wall / 1e9);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: f64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(0.4);
    let rounds: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(5);
    for size in [16 * 1024, 1500, 64] {
        let mut cands: Vec<(String, Cand)> = (0..3).map(make).collect();
        let mut buf = vec![0x5au8; size];
        let mut res = vec![Vec::new(); cands.len()];
        for (_, c) in cands.iter_mut() {
            round(c, &mut buf, 0.1);
        }
        let mut wall = vec![Vec::new(); cands.len()];
        for _ in 0..rounds {
            for (i, (_, c)) in cands.iter_mut().enumerate() {
                let (g, w) = round(c, &mut buf, secs);
                res[i].push(g);
                wall[i].push(w);
            }
        }
        println!("buffer {size} bytes (GB per CPU-second of the thread; wall-clock median last):");
        for (i, (name, _)) in cands.iter().enumerate() {
            let r = &mut res[i];
            r.sort_by(f64::total_cmp);
            let w = &mut wall[i];
            w.sort_by(f64::total_cmp);
            println!(
                "  {name:40} median {:6.2}   best {:6.2}   wall median {:6.2}",
                r[r.len() / 2],
                r[r.len() - 1],
                w[w.len() / 2]
            );
        }
    }
}
