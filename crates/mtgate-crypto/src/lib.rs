//! mtgate-crypto: the one crate of mtgate that names a cryptography library.
//!
//! Everything else in the workspace goes through these small, typed wrappers, so
//! the backend can be swapped (and benchmarked) in one place:
//!
//! * [`AesCtr`]: streaming AES-256-CTR with a full 128-bit big-endian counter
//!   (OpenSSL `EVP_aes_256_ctr` semantics), applied in place;
//! * [`sha256`], [`hmac_sha256`]: one-shot digests over several parts;
//! * [`Key16`]: a 16-byte proxy secret that is zeroized on drop, compared in
//!   constant time, and never printed;
//! * [`x25519_public_key`], [`fill_random`]: handshake helpers; [`keyshare`]:
//!   ServerHello key shares computed ahead by a background thread.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub mod cbc;
pub use cbc::{AesCbcDec, AesCbcEnc};
pub mod keyshare;

#[cfg(target_arch = "x86_64")]
mod ctr_vaes;

// CTR only ever encrypts blocks: the encrypt-only key schedule halves the cipher state.
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256Enc>;

/// Streaming AES-256-CTR. The keystream position is kept between calls, so a
/// connection's cipher is created once and fed every byte of one direction.
///
/// Backend (chosen once per process by CPU detection, see docs/BENCHMARKS.md "Crypto
/// backend"): on x86_64 with AES-NI, VAES, AVX-512F and AVX-512BW our own VAES code
/// (`ctr_vaes`), else RustCrypto `aes` 0.8 + `ctr` 0.9 ("reference"). Both give the same
/// keystream.
pub struct AesCtr {
    inner: Backend,
}

// The VAES state stays inline (it is the hot path, and smaller than the 1 KiB of the
// unboxed reference); only the fallback pays for a Box.
#[allow(clippy::large_enum_variant)]
enum Backend {
    #[cfg(target_arch = "x86_64")]
    Vaes(ctr_vaes::VaesCtr),
    /// Boxed: 1 KiB (the `aes` crate keeps a software key schedule beside the AES-NI one),
    /// against 273 bytes for the VAES state, and idle connections hold four ciphers.
    Reference(Box<Aes256Ctr>),
}

impl AesCtr {
    /// Creates the cipher at keystream offset 0.
    pub fn new(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        #[cfg(target_arch = "x86_64")]
        if let Some(c) = ctr_vaes::VaesCtr::new(key, iv) {
            return Self {
                inner: Backend::Vaes(c),
            };
        }
        Self::new_reference(key, iv)
    }

    /// The same cipher on the RustCrypto backend whatever the CPU (tests, benchmarks).
    #[doc(hidden)]
    pub fn new_reference(key: &[u8; 32], iv: &[u8; 16]) -> Self {
        Self {
            inner: Backend::Reference(Box::new(Aes256Ctr::new(key.into(), iv.into()))),
        }
    }

    /// The backend this cipher runs on: `"vaes-avx512"` or `"rustcrypto"`.
    pub fn backend(&self) -> &'static str {
        match &self.inner {
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes(_) => "vaes-avx512",
            Backend::Reference(_) => "rustcrypto",
        }
    }

    /// XORs the next `buf.len()` keystream bytes into `buf` (encrypt == decrypt).
    /// Deliberately not `#[inline]`: it stays compiled at this crate's opt level
    /// even in debug builds of callers (release builds inline it through LTO).
    pub fn apply(&mut self, buf: &mut [u8]) {
        match &mut self.inner {
            #[cfg(target_arch = "x86_64")]
            Backend::Vaes(c) => c.apply(buf),
            Backend::Reference(c) => c.apply_keystream(buf),
        }
    }
}

impl std::fmt::Debug for AesCtr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AesCtr(..)")
    }
}

/// SHA-256 over the concatenation of `parts`.
pub fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// HMAC-SHA256 with `key` over the concatenation of `parts`.
pub fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// A 16-byte proxy secret ("base secret" of PROTOCOL §1.1).
///
/// Zeroized on drop; `Debug` prints nothing of the key; equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key16([u8; 16]);

impl Key16 {
    pub fn new(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }

    /// A fresh random secret from the OS generator. Its first byte is never
    /// `0xdd` or `0xee`: some clients (Telethon) read a plain secret that
    /// starts so as a `dd` or `ee` form and refuse it (2 of 256 first bytes
    /// left out: 127.98 bits of entropy instead of 128).
    pub fn generate() -> Self {
        let mut b = [0u8; 16];
        loop {
            fill_random(&mut b);
            if b[0] != 0xdd && b[0] != 0xee {
                return Self(b);
            }
        }
    }

    /// The raw key bytes: only for hashing and for printing links on purpose.
    pub fn expose(&self) -> &[u8; 16] {
        &self.0
    }
}

impl PartialEq for Key16 {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}
impl Eq for Key16 {}

impl std::fmt::Debug for Key16 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key16(<redacted>)")
    }
}

/// Fills `buf` from the operating system's CSPRNG (via a thread-local ChaCha).
pub fn fill_random(buf: &mut [u8]) {
    use rand::RngCore;
    rand::thread_rng().fill_bytes(buf);
}

/// A uniformly random integer in `lo..=hi`.
pub fn random_range(lo: u32, hi: u32) -> u32 {
    use rand::Rng;
    rand::thread_rng().gen_range(lo..=hi)
}

/// The X25519 public key for a 32-byte scalar (clamped as RFC 7748 says), so a
/// fake key share is a real curve point.
pub fn x25519_public_key(scalar: [u8; 32]) -> [u8; 32] {
    let secret = x25519_dalek::StaticSecret::from(scalar);
    x25519_dalek::PublicKey::from(&secret).to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn ctr_matches_protocol_vector_12_2() {
        // PROTOCOL §12.2: proxy decrypt key/iv, header decrypts to tag dd, DC 2.
        let key: [u8; 32] = h("83a2d97099d28b3893ad228a82e5d60402f372ba0e69f64e67b6d8f6f0b14cd8")
            .try_into()
            .unwrap();
        let iv: [u8; 16] = h("68696a6b6c6d6e6f7071727374757677").try_into().unwrap();
        let mut c = AesCtr::new(&key, &iv);
        let mut wire = h(concat!(
            "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f",
            "606162636465666768696a6b6c6d6e6f7071727374757677daacbd2ca7de43f9"
        ));
        // Split to prove the keystream position is kept between calls.
        let (a, b) = wire.split_at_mut(13);
        c.apply(a);
        c.apply(b);
        assert_eq!(&wire[56..62], &h("dddddddd0200")[..]);
    }

    /// NIST SP 800-38A F.5.5 (CTR-AES256.Encrypt); the counter starts at f0f1…feff.
    #[test]
    fn ctr_matches_nist_sp800_38a_f55() {
        let key: [u8; 32] = h("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4")
            .try_into()
            .unwrap();
        let iv: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
        let plain = h(concat!(
            "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51",
            "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710"
        ));
        let wire = h(concat!(
            "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5",
            "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6"
        ));
        for c in [AesCtr::new(&key, &iv), AesCtr::new_reference(&key, &iv)] {
            let mut c = c;
            let mut buf = plain.clone();
            c.apply(&mut buf);
            assert_eq!(buf, wire, "{}", c.backend());
            // Byte by byte across block edges too.
            let mut c = AesCtr {
                inner: AesCtr::new(&key, &iv).inner,
            };
            let mut buf = plain.clone();
            for b in buf.chunks_mut(1) {
                c.apply(b);
            }
            assert_eq!(buf, wire);
        }
    }

    /// On a CPU with the features, `new` must pick the VAES backend: a silent fallback
    /// to the reference would make the equivalence tests below compare it with itself.
    #[test]
    fn vaes_backend_is_used_when_the_cpu_has_it() {
        let c = AesCtr::new(&[1; 32], &[2; 16]);
        #[cfg(target_arch = "x86_64")]
        {
            let has = std::is_x86_feature_detected!("aes")
                && std::is_x86_feature_detected!("vaes")
                && std::is_x86_feature_detected!("avx512f")
                && std::is_x86_feature_detected!("avx512bw");
            assert_eq!(c.backend() == "vaes-avx512", has, "backend {}", c.backend());
        }
        #[cfg(not(target_arch = "x86_64"))]
        assert_eq!(c.backend(), "rustcrypto");
        assert_eq!(
            AesCtr::new_reference(&[1; 32], &[2; 16]).backend(),
            "rustcrypto"
        );
    }

    #[test]
    fn struct_size() {
        // Idle connections hold four ciphers each: keep this small.
        // (Before the VAES backend, AesCtr was a bare Ctr128BE<Aes256Enc>: 1024 bytes.)
        let reference = std::mem::size_of::<Aes256Ctr>();
        let now = std::mem::size_of::<AesCtr>();
        println!("size_of: Ctr128BE<Aes256Enc> {reference}, AesCtr {now}");
        assert!(now <= 288, "AesCtr grew to {now} bytes");
    }

    /// Counter wraps inside the 16-block main loop, the tail and the partial block.
    #[test]
    fn counter_carry_and_wrap_match_reference() {
        let key = [0x5a; 32];
        for base in [u64::MAX as u128, u128::MAX] {
            for back in 0..40u128 {
                let iv = base.wrapping_sub(back).to_be_bytes();
                for len in [1usize, 15, 16, 17, 255, 256, 257, 700, 1500] {
                    let mut a = vec![0u8; len];
                    let mut b = a.clone();
                    let mut x = AesCtr::new(&key, &iv);
                    let mut y = AesCtr::new_reference(&key, &iv);
                    let cut = len / 3;
                    x.apply(&mut a[..cut]);
                    x.apply(&mut a[cut..]);
                    y.apply(&mut b);
                    assert_eq!(a, b, "iv {iv:02x?} len {len}");
                }
            }
        }
    }

    fn iv_strategy() -> impl proptest::strategy::Strategy<Value = [u8; 16]> {
        use proptest::prelude::*;
        prop_oneof![
            any::<[u8; 16]>(),
            // Low 64 bits about to carry into the high 64 bits.
            (any::<u64>(), 0u64..600).prop_map(|(hi, back)| {
                ((u128::from(hi) << 64) | u128::from(u64::MAX - back)).to_be_bytes()
            }),
            // The whole 128-bit counter about to wrap to zero.
            (0u128..600).prop_map(|back| (u128::MAX - back).to_be_bytes()),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(400))]
        /// Same bytes as the RustCrypto reference for any key, IV and split into calls.
        #[test]
        fn matches_reference_over_random_calls(
            key in proptest::prelude::any::<[u8; 32]>(),
            iv in iv_strategy(),
            lens in proptest::collection::vec(0usize..5000, 0..12),
            seed in proptest::prelude::any::<u8>(),
        ) {
            let mut x = AesCtr::new(&key, &iv);
            let mut y = AesCtr::new_reference(&key, &iv);
            for (n, len) in lens.into_iter().enumerate() {
                let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ seed ^ (n as u8)).collect();
                let mut a = data.clone();
                let mut b = data;
                x.apply(&mut a);
                y.apply(&mut b);
                proptest::prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn sha256_and_hmac_known_answers() {
        assert_eq!(
            sha256(&[b"ab", b"c"]).to_vec(),
            h("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]).to_vec(),
            h("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn key16_never_prints_and_compares() {
        let k = Key16::new([7; 16]);
        assert_eq!(format!("{k:?}"), "Key16(<redacted>)");
        assert_eq!(k, Key16::new([7; 16]));
        assert_ne!(k, Key16::new([8; 16]));
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"a", b"ab"));
    }

    #[test]
    fn x25519_base_point_rfc7748() {
        let scalar: [u8; 32] =
            h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
                .try_into()
                .unwrap();
        assert_eq!(
            x25519_public_key(scalar).to_vec(),
            h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }
}
