//! AES-256-CTR on VAES + AVX-512 (x86_64 only), the fast backend of [`crate::AesCtr`].
//!
//! * Key schedule: AES-NI (`aeskeygenassist`), expanded from the 32-byte key at the
//!   start of each `apply` call into 15 round keys broadcast to the four 128-bit lanes
//!   of zmm registers. The struct keeps the key, not the 240 bytes of round keys: a
//!   relayed connection holds four ciphers for as long as it is open, idle or not, and
//!   the expansion (about 20 ns) is small beside any `apply` that has data to cipher.
//! * Keystream: `PAR_ZMM` zmm registers of 4 counter blocks each per iteration
//!   (16 blocks = 256 bytes), `vaesenc` on all of them round by round.
//! * Counter: the whole 16-byte IV is one 128-bit big-endian counter, wrapping at
//!   2^128 (OpenSSL `EVP_aes_256_ctr`, RustCrypto `ctr::Ctr128BE`). The fast path adds
//!   to the low 64 bits in the vector unit; a group of blocks whose low half would
//!   carry into the high half is built in scalar code.
//! * The stream is continuous over `apply` calls of any length: the keystream of a
//!   partly used block is kept (`ks`, `pos`) and used first by the next call.
//!
//! Only [`VaesCtr::new`] creates a value, and it returns `None` unless the CPU has every
//! feature the `#[target_feature]` functions below enable ([`available`]); so holding a
//! `VaesCtr` proves the features are present, which is what makes the calls sound.

use core::arch::x86_64::*;
use std::sync::atomic::{AtomicU8, Ordering};
use zeroize::Zeroize;

/// Round keys of AES-256.
const RK: usize = 15;
/// zmm registers (4 blocks each) encrypted per main-loop iteration.
const PAR_ZMM: usize = 4;
/// Blocks per main-loop iteration.
const PAR_BLOCKS: usize = PAR_ZMM * 4;
/// Bytes per main-loop iteration.
const PAR_BYTES: usize = PAR_BLOCKS * 16;

/// Whether this CPU has AES-NI, VAES, AVX-512F and AVX-512BW (detected once, then cached).
pub(crate) fn available() -> bool {
    // 0 = not yet detected, 1 = absent, 2 = present.
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let ok = std::is_x86_feature_detected!("aes")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw");
            STATE.store(if ok { 2 } else { 1 }, Ordering::Relaxed);
            ok
        }
    }
}

/// AES-256-CTR state: the key, the counter and one partial keystream block.
pub(crate) struct VaesCtr {
    /// The AES-256 key (expanded per `apply`).
    key: [u8; 32],
    /// Counter of the next block to generate, big-endian (bytes, so the struct needs no
    /// 16-byte alignment: 65 bytes in all).
    ctr: [u8; 16],
    /// Keystream of the block before `ctr`; `ks[pos..]` is still unused.
    ks: [u8; 16],
    /// Bytes of `ks` already used; 16 = none left.
    pos: u8,
}

impl VaesCtr {
    /// The cipher at keystream offset 0, or `None` when the CPU lacks the features.
    pub(crate) fn new(key: &[u8; 32], iv: &[u8; 16]) -> Option<Self> {
        if !available() {
            return None;
        }
        Some(Self {
            key: *key,
            ctr: *iv,
            ks: [0; 16],
            pos: 16,
        })
    }

    /// XORs the next `buf.len()` keystream bytes into `buf`.
    #[inline]
    pub(crate) fn apply(&mut self, buf: &mut [u8]) {
        // SAFETY: a `VaesCtr` exists only if `new` saw `available()` return true, i.e. the
        // CPU has aes, vaes, avx512f and avx512bw, every feature `apply_vaes` enables.
        unsafe { self.apply_vaes(buf) }
    }

    #[target_feature(enable = "aes,avx512f,avx512bw,vaes")]
    fn apply_vaes(&mut self, buf: &mut [u8]) {
        // 1. The rest of a partly used keystream block.
        let mut buf = buf;
        let pos = usize::from(self.pos);
        if pos < 16 {
            let n = (16 - pos).min(buf.len());
            for (b, k) in buf[..n].iter_mut().zip(&self.ks[pos..pos + n]) {
                *b ^= k;
            }
            // n <= 16 - pos, so this stays <= 16.
            self.pos += n as u8;
            buf = &mut buf[n..];
        }
        if buf.is_empty() {
            return;
        }
        // From here on `ks` is used up and `ctr` is the next block.
        let mut round_keys = expand_key(&self.key);
        let rk = broadcast_keys(&round_keys);
        round_keys.zeroize();
        let mut ctr = u128::from_be_bytes(self.ctr);

        // 2. Whole groups of PAR_BLOCKS blocks.
        let mut chunks = buf.chunks_exact_mut(PAR_BYTES);
        for chunk in &mut chunks {
            let ks = keystream::<PAR_ZMM>(&rk, ctr);
            ctr = ctr.wrapping_add(PAR_BLOCKS as u128);
            let p = chunk.as_mut_ptr();
            for (i, k) in ks.iter().enumerate() {
                // SAFETY: `chunk` is exactly PAR_BYTES = PAR_ZMM * 64 bytes and i < PAR_ZMM,
                // so the 64 bytes at `p + 64 * i` lie inside it; `loadu`/`storeu` take any
                // alignment; `chunk` is a unique borrow, so nothing else aliases it.
                unsafe {
                    let q = p.add(64 * i).cast::<__m512i>();
                    _mm512_storeu_si512(q, _mm512_xor_si512(_mm512_loadu_si512(q), *k));
                }
            }
        }

        // 3. The tail: 1..PAR_BYTES - 1 bytes, in as few zmm registers as cover it.
        let tail = chunks.into_remainder();
        let len = tail.len();
        self.ctr = ctr.wrapping_add(len.div_ceil(16) as u128).to_be_bytes();
        let last = match len {
            0 => return,
            1..=64 => xor_tail::<1>(&rk, ctr, tail),
            65..=128 => xor_tail::<2>(&rk, ctr, tail),
            _ => xor_tail::<PAR_ZMM>(&rk, ctr, tail),
        };
        let used = len % 16;
        if used != 0 {
            // Keep the last, partly used block for the next call.
            // SAFETY: `self.ks` is a 16-byte array, exactly what an unaligned 128-bit
            // store writes.
            unsafe { _mm_storeu_si128(self.ks.as_mut_ptr().cast(), last) };
            self.pos = used as u8;
        }
    }
}

/// XORs the keystream of counters `ctr, ctr + 1, …` into `tail` (1..=64 * N bytes) with
/// masked loads and stores; returns the keystream block that covers the last byte.
#[inline]
#[target_feature(enable = "aes,avx512f,avx512bw,vaes")]
fn xor_tail<const N: usize>(rk: &[__m512i; RK], ctr: u128, tail: &mut [u8]) -> __m128i {
    let len = tail.len();
    debug_assert!(len >= 1 && len <= 64 * N);
    let ks = keystream::<N>(rk, ctr);
    let p = tail.as_mut_ptr();
    for (i, k) in ks.iter().enumerate() {
        let off = 64 * i;
        if off >= len {
            break;
        }
        let n = (len - off).min(64);
        let mask: u64 = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        // SAFETY: the mask has bits 0..n set and n <= len - off, so only the bytes
        // `off..off + n` of `tail` are read and written; AVX-512 masked loads and
        // stores do not access (and cannot fault on) bytes whose mask bit is clear.
        // Any alignment is allowed; `tail` is a unique borrow.
        unsafe {
            let q = p.add(off).cast::<i8>();
            let x = _mm512_maskz_loadu_epi8(mask, q);
            _mm512_mask_storeu_epi8(q, mask, _mm512_xor_si512(x, *k));
        }
    }
    // Block (len - 1) / 16 holds the last byte; it is < 4 * N since len <= 64 * N.
    let last = (len - 1) / 16;
    let z = ks[last / 4];
    match last % 4 {
        0 => _mm512_extracti32x4_epi32::<0>(z),
        1 => _mm512_extracti32x4_epi32::<1>(z),
        2 => _mm512_extracti32x4_epi32::<2>(z),
        _ => _mm512_extracti32x4_epi32::<3>(z),
    }
}

impl Drop for VaesCtr {
    fn drop(&mut self) {
        self.key.zeroize();
        self.ks.zeroize();
        self.ctr.zeroize();
    }
}

/// Each round key repeated in the four 128-bit lanes of a zmm register.
#[inline]
#[target_feature(enable = "avx512f")]
fn broadcast_keys(rk: &[[u8; 16]; RK]) -> [__m512i; RK] {
    let mut out = [_mm512_setzero_si512(); RK];
    for (o, k) in out.iter_mut().zip(rk) {
        // SAFETY: `k` is a 16-byte array, exactly what an unaligned 128-bit load reads.
        *o = _mm512_broadcast_i32x4(unsafe { _mm_loadu_si128(k.as_ptr().cast()) });
    }
    out
}

/// Keystream of the 4 * N blocks with counters `ctr, ctr + 1, …` (mod 2^128).
#[inline]
#[target_feature(enable = "aes,avx512f,avx512bw,vaes")]
fn keystream<const N: usize>(rk: &[__m512i; RK], ctr: u128) -> [__m512i; N] {
    let mut b = counter_blocks::<N>(ctr);
    for x in &mut b {
        *x = _mm512_xor_si512(*x, rk[0]);
    }
    for k in &rk[1..RK - 1] {
        for x in &mut b {
            *x = _mm512_aesenc_epi128(*x, *k);
        }
    }
    for x in &mut b {
        *x = _mm512_aesenclast_epi128(*x, rk[RK - 1]);
    }
    b
}

/// The counter blocks `ctr, ctr + 1, …, ctr + 4 * N - 1` (mod 2^128), big-endian,
/// four to a zmm register in ascending order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn counter_blocks<const N: usize>(ctr: u128) -> [__m512i; N] {
    let lo = ctr as u64;
    let mut out = [_mm512_setzero_si512(); N];
    if lo <= u64::MAX - (4 * N as u64 - 1) {
        // No carry out of the low 64 bits: add 0..4 * N to the low half of each lane
        // (little-endian lanes: qword 0 = low, qword 1 = high), then byte-swap each lane.
        let base = _mm512_broadcast_i32x4(_mm_set_epi64x((ctr >> 64) as u64 as i64, lo as i64));
        let bswap = _mm512_broadcast_i32x4(_mm_set_epi8(
            0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,
        ));
        for (i, o) in out.iter_mut().enumerate() {
            let j = 4 * i as i64;
            let inc = _mm512_set_epi64(0, j + 3, 0, j + 2, 0, j + 1, 0, j);
            *o = _mm512_shuffle_epi8(_mm512_add_epi64(base, inc), bswap);
        }
    } else {
        // Rare: the low half wraps inside this group; carry with u128 arithmetic.
        for (i, o) in out.iter_mut().enumerate() {
            let mut bytes = [[0u8; 16]; 4];
            for (j, b) in bytes.iter_mut().enumerate() {
                *b = ctr.wrapping_add((4 * i + j) as u128).to_be_bytes();
            }
            // SAFETY: `bytes` is 4 * 16 = 64 contiguous bytes, what a 512-bit load reads.
            *o = unsafe { _mm512_loadu_si512(bytes.as_ptr().cast()) };
        }
    }
    out
}

/// One AES-256 key-expansion step for the even round keys (`RotWord`, `SubWord`, `rcon`).
#[inline]
#[target_feature(enable = "aes")]
fn expand_even(prev: __m128i, assist: __m128i) -> __m128i {
    let t = _mm_shuffle_epi32::<0xff>(assist);
    mix(prev, t)
}

/// One AES-256 key-expansion step for the odd round keys (`SubWord` only).
#[inline]
#[target_feature(enable = "aes")]
fn expand_odd(prev: __m128i, assist: __m128i) -> __m128i {
    let t = _mm_shuffle_epi32::<0xaa>(assist);
    mix(prev, t)
}

/// `w[i] = w[i - 8] ^ …` for the four words of a round key: prefix XOR of `prev`, then `t`.
#[inline]
#[target_feature(enable = "aes")]
fn mix(prev: __m128i, t: __m128i) -> __m128i {
    let mut k = prev;
    let mut s = _mm_slli_si128::<4>(prev);
    k = _mm_xor_si128(k, s);
    s = _mm_slli_si128::<4>(s);
    k = _mm_xor_si128(k, s);
    s = _mm_slli_si128::<4>(s);
    k = _mm_xor_si128(k, s);
    _mm_xor_si128(k, t)
}

/// The 15 AES-256 encryption round keys of `key` (FIPS 197 §5.2), with AES-NI.
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8; 32]) -> [[u8; 16]; RK] {
    // SAFETY: `key` is 32 bytes; the two unaligned 16-byte loads read bytes 0..16 and 16..32.
    let (mut k0, mut k1) = unsafe {
        (
            _mm_loadu_si128(key.as_ptr().cast()),
            _mm_loadu_si128(key.as_ptr().add(16).cast()),
        )
    };
    let mut rk = [_mm_setzero_si128(); RK];
    rk[0] = k0;
    rk[1] = k1;
    macro_rules! step {
        ($i:literal, $rcon:literal) => {
            k0 = expand_even(k0, _mm_aeskeygenassist_si128::<$rcon>(k1));
            rk[$i] = k0;
            k1 = expand_odd(k1, _mm_aeskeygenassist_si128::<0>(k0));
            rk[$i + 1] = k1;
        };
    }
    step!(2, 0x01);
    step!(4, 0x02);
    step!(6, 0x04);
    step!(8, 0x08);
    step!(10, 0x10);
    step!(12, 0x20);
    // The 15th and last round key is an even one.
    rk[14] = expand_even(k0, _mm_aeskeygenassist_si128::<0x40>(k1));
    let mut out = [[0u8; 16]; RK];
    for (o, k) in out.iter_mut().zip(&rk) {
        // SAFETY: `o` is a 16-byte array, exactly what an unaligned 128-bit store writes.
        unsafe { _mm_storeu_si128(o.as_mut_ptr().cast(), *k) };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 197 Appendix A.3: the last round key of the key 603deb10…0914dff4.
    #[test]
    fn key_expansion_fips197_a3() {
        if !available() {
            return;
        }
        let key: [u8; 32] =
            hex::decode("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
                .unwrap()
                .try_into()
                .unwrap();
        // SAFETY: `available()` confirmed AES-NI.
        let rk = unsafe { expand_key(&key) };
        assert_eq!(hex::encode(rk[1]), "1f352c073b6108d72d9810a30914dff4");
        assert_eq!(hex::encode(rk[2]), "9ba354118e6925afa51a8b5f2067fcde");
        assert_eq!(hex::encode(rk[14]), "fe4890d1e6188d0b046df344706c631e");
    }
}
